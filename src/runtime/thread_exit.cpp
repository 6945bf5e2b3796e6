#include "runtime/thread_exit.h"

#include <sys/stat.h>
#include <unistd.h>

#include <string>
#include <thread>

namespace troupe::runtime {

bool await_threads_gone(const std::vector<int>& tids, std::chrono::milliseconds limit) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  const int self = static_cast<int>(gettid());
  for (const int tid : tids) {
    if (tid == self) continue;
    const auto task = "/proc/self/task/" + std::to_string(tid);
    struct stat st;
    // The kernel removes the entry once the thread has exited completely.
    while (::stat(task.c_str(), &st) == 0) {
      if (std::chrono::steady_clock::now() > deadline) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }
  return true;
}

}  // namespace troupe::runtime
