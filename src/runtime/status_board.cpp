#include "runtime/status_board.h"

namespace troupe::runtime {

void StatusEntry::set_error(std::string error) {
  std::lock_guard<std::mutex> lock(error_mutex_);
  last_error_ = std::move(error);
  state_.store("failed", std::memory_order_relaxed);
}

actors::actor_status StatusEntry::snapshot() const {
  actors::actor_status s;
  s.name = name_;
  s.state = state_.load(std::memory_order_relaxed);
  s.step = step_.load(std::memory_order_relaxed);
  s.mailbox = mailbox_.load(std::memory_order_relaxed);
  s.handled = handled_.load(std::memory_order_relaxed);
  std::lock_guard<std::mutex> lock(error_mutex_);
  s.last_error = last_error_;
  return s;
}

std::shared_ptr<StatusEntry> StatusBoard::enroll(const std::string& name) {
  auto entry = std::make_shared<StatusEntry>(name);
  std::lock_guard<std::mutex> lock(mutex_);
  entries_.push_back(entry);
  return entry;
}

std::vector<actors::actor_status> StatusBoard::snapshot() const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<actors::actor_status> out;
  for (const auto& weak : entries_)
    if (auto e = weak.lock()) out.push_back(e->snapshot());
  return out;
}

}  // namespace troupe::runtime
