#include "runtime/teardown_deadline.h"

#include <cstdlib>
#include <iostream>

namespace troupe::runtime {

void TeardownDeadline::arm(std::chrono::milliseconds limit, int exit_code, std::string why) {
  if (watcher_.joinable()) return;
  watcher_ = std::thread([this, limit, exit_code, why = std::move(why)] {
    std::unique_lock lock(mu_);
    if (cv_.wait_for(lock, limit, [this] { return done_; })) return;
    std::cout.flush();
    std::cerr << "troupe: " << why << std::endl;
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
