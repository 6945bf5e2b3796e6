#include "runtime/failpoint.h"

#include <atomic>
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
