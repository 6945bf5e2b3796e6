// A process-wide board where every actor publishes its status with atomic stores. An actor in
// the middle of a long computation cannot answer a message; the board can still be read.
#pragma once
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "actors/status_protocol.h"

namespace troupe::runtime {

class StatusEntry {
 public:
  explicit StatusEntry(std::string name) : name_(std::move(name)) {}
  // Called at the top of every handler: counts the message, records the queue depth.
  void on_message(uint64_t mailbox_depth) {
    handled_.fetch_add(1, std::memory_order_relaxed);
    mailbox_.store(mailbox_depth, std::memory_order_relaxed);
  }
  void set_state(const char* state) { state_.store(state, std::memory_order_relaxed); }  // static strings only
  void set_step(int64_t step) { step_.store(step, std::memory_order_relaxed); }
  void set_error(std::string error);
  actors::actor_status snapshot() const;

 private:
  std::string name_;
  std::atomic<const char*> state_{"starting"};
  std::atomic<int64_t> step_{0};
  std::atomic<uint64_t> mailbox_{0}, handled_{0};
  mutable std::mutex error_mutex_;  // errors are rare; the hot path never takes it
  std::string last_error_;
};

class StatusBoard {
 public:
  std::shared_ptr<StatusEntry> enroll(const std::string& name);
  std::vector<actors::actor_status> snapshot() const;

 private:
  mutable std::mutex mutex_;
  std::vector<std::weak_ptr<StatusEntry>> entries_;
};

}  // namespace troupe::runtime
