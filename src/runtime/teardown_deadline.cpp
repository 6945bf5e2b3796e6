#include "runtime/teardown_deadline.h"

#include <cstdlib>
#include <iostream>

#include "runtime/crash_report.h"

namespace troupe::runtime {

void TeardownDeadline::arm(std::chrono::milliseconds limit, int exit_code, std::string why) {
  if (watcher_.joinable()) return;
  watcher_ = std::thread([this, limit, exit_code, why = std::move(why)] {
    std::unique_lock lock(mu_);
    if (cv_.wait_for(lock, limit, [this] { return done_; })) return;
    std::cout.flush();
    std::cerr << "troupe: " << why << std::endl;
    dump_thread_stacks("what each thread was doing when the teardown ran out of time");
    std::_Exit(exit_code);
  });
}

TeardownDeadline::~TeardownDeadline() {
  {
    std::lock_guard lock(mu_);
    done_ = true;
  }
  cv_.notify_all();
  if (watcher_.joinable()) watcher_.join();
}

}  // namespace troupe::runtime
