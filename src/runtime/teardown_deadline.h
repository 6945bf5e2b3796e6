// Bounds the wait for a job's actors to stop once the job has ended. A rank stuck where no
// timeout of ours reaches it (a GPU collective whose peer is gone, a driver call) would
// otherwise keep the process alive forever after its error was printed.
#pragma once
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>

namespace troupe::runtime {

class TeardownDeadline {
 public:
  TeardownDeadline() = default;
  ~TeardownDeadline();  // the teardown is over: disarm
  TeardownDeadline(const TeardownDeadline&) = delete;
  TeardownDeadline& operator=(const TeardownDeadline&) = delete;

  // From now on, if this object is not destroyed within `limit`, print `why` to stderr and
  // leave the process at once with `exit_code`. Arm it only once the job's results are on disk.
  void arm(std::chrono::milliseconds limit, int exit_code, std::string why);

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::thread watcher_;
};

}  // namespace troupe::runtime
