#include "runtime/failpoint.h"

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <thread>
#include <memory>
#include <mutex>

namespace troupe::runtime {

namespace {
std::atomic<bool> installed{false};
std::mutex handler_mutex;
std::shared_ptr<const FailpointHandler> current;  // under handler_mutex
}  // namespace

void set_failpoint_handler(FailpointHandler handler) {
  std::lock_guard lock(handler_mutex);
  current = handler ? std::make_shared<const FailpointHandler>(std::move(handler)) : nullptr;
  installed.store(current != nullptr, std::memory_order_release);
}

void install_failpoint_from_environment() {
  const char* spec = std::getenv("TROUPE_FAILPOINT");
  if (!spec) return;
  const std::string text = spec;
  const auto eq = text.find('=');
  const auto at = text.substr(0, eq);
  const bool hang = eq != std::string::npos && text.substr(eq + 1) == "hang";
  set_failpoint_handler([at, hang](const char* where, int64_t) {
    if (at != where) return;
    if (!hang) throw std::runtime_error("failpoint " + at + " (TROUPE_FAILPOINT)");
    for (;;) std::this_thread::sleep_for(std::chrono::hours(1));
  });
}

void failpoint(const char* where, int64_t rank) {
  if (!installed.load(std::memory_order_acquire)) return;
  std::shared_ptr<const FailpointHandler> handler;
  {
    std::lock_guard lock(handler_mutex);
    handler = current;
  }
  if (handler) (*handler)(where, rank);  // outside the lock: it may block
}

}  // namespace troupe::runtime
