// A process-wide board where every actor publishes its status with atomic stores. An actor in
// the middle of a long computation cannot answer a message; the board can still be read (the
// inspection endpoint reads only this). Node 0's board also holds the job line and the other
// nodes' actors as they last reported them.
#pragma once
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "actors/status_protocol.h"
#include "actors/step_record.h"
#include "comm/flight_recorder.h"

namespace troupe::actors {

// How long a stage may go without progress inside a step before the job calls it stuck: the
// first step it runs (allocations, cuDNN's choices, NCCL's connections) and the later ones.
struct StallLimits {
  std::chrono::milliseconds first_step, step;
};

class StatusEntry {
 public:
  StatusEntry(std::string name, int64_t node);
  // Called at the top of every handler: counts the message, records the queue depth.
  void on_message(uint64_t mailbox_depth) {
    handled_.fetch_add(1, std::memory_order_relaxed);
    mailbox_.store(mailbox_depth, std::memory_order_relaxed);
  }
  // The same, and the message itself joins the actor's recent ones (the console's detail view).
  template <class Actor>
  void on_message(Actor* self) {
    on_message(self->mailbox().size());
    if (auto* element = self->current_mailbox_element()) remember(element->content());
  }
  // Static strings only. Busy time accrues in every state but the waiting ones (idle,
  // waiting-*, paused, starting, done).
  void set_state(const char* state);
  void set_step(int64_t step);
  void set_micro_batch(int64_t m) {
    micro_batch_.store(m, std::memory_order_relaxed);
    progressed();
  }
  // What the actor's thread began last (a static string: "forward", "backward", ...) and on
  // which unit (-1: none). Also its heartbeat: stalled() measures from the latest of these.
  void set_activity(const char* what, int64_t unit) {
    activity_.store(what, std::memory_order_relaxed);
    activity_unit_.store(unit, std::memory_order_relaxed);
    progressed();
  }
  // Set when the actor is busy inside a step and nothing (state, micro-batch, activity) has
  // moved for longer than its limit as of `now`: one line naming it and what it was doing.
  std::optional<std::string> stalled(const StallLimits& limits, std::chrono::steady_clock::time_point now) const;
  void set_bytes_in_flight(uint64_t bytes) { bytes_.store(bytes, std::memory_order_relaxed); }
  // A stage's collectives: snapshot() reports FlightRecorder::summary (its failed, else oldest unfinished, else last).
  void set_flight_recorder(std::shared_ptr<const comm::FlightRecorder> recorder);
  void set_error(std::string error);
  void set_detail(std::string detail);
  actors::actor_status snapshot() const;
  const std::string& name() const { return name_; }
  const std::string& kind() const { return kind_; }

 private:
  static int64_t now_ns();
  void progressed() { progress_ns_.store(now_ns(), std::memory_order_relaxed); }
  std::chrono::nanoseconds quiet(std::chrono::steady_clock::time_point now) const;
  std::string activity() const;
  std::string name_, kind_;
  int64_t node_, rank_;
  int64_t born_ns_;
  std::atomic<const char*> state_{"starting"};
  std::atomic<int64_t> step_{0}, micro_batch_{0};
  std::atomic<int64_t> first_step_{-1};  // the first step set: the one with the longer limit
  std::atomic<int64_t> progress_ns_{0};
  std::atomic<const char*> activity_{nullptr};
  std::atomic<int64_t> activity_unit_{-1};
  std::atomic<uint64_t> mailbox_{0}, handled_{0}, bytes_{0};
  std::atomic<int64_t> busy_total_ns_{0}, busy_since_ns_{0};  // busy_since 0: not busy now
  mutable std::mutex error_mutex_;  // errors are rare; the hot path never takes it
  std::string last_error_, detail_;
  std::shared_ptr<const comm::FlightRecorder> recorder_;  // under error_mutex_
  struct Heard {
    int64_t at_ns;
    std::string text;
  };
  std::vector<Heard> recent_;  // a ring of kRecent, under error_mutex_
  size_t next_recent_ = 0;
  void remember(const caf::type_erased_tuple& message);
};

// Where an actor is, in one line: "stage[3]: state computing, step 7, micro-batch 2, last began:
// backward of unit 12, quiet for 11 s" (", node 1" after the name for another node's).
std::string whereabouts(const actors::actor_status& actor);

// The whereabouts of the stages in `actors` by rank, "; "-separated (of more than `most`, the
// `most` that have been quiet longest); empty when none has begun a step.
std::string stages_whereabouts(const std::vector<actors::actor_status>& actors, size_t most = 16);

// The job as node 0 sees it, for the console's first line.
struct JobStatus {
  std::string state = "starting";  // starting | running | paused | stopping | done
  int64_t step = 0, steps = 0;
  double loss = 0, tokens_per_second = 0, mfu = 0, eta_seconds = -1;
  int64_t gpu_peak_active_bytes = 0;
  int64_t log_freq = 0;
  std::string last_checkpoint;  // "step-N" once committed
  int64_t nodes = 1, ranks = 1;
  double lr = 0, grad_norm = 0;
};

class StatusBoard {
 public:
  explicit StatusBoard(int64_t node = 0) : node_(node) {}
  // Called on the actor's own thread, which the board remembers (enrolled_threads()).
  std::shared_ptr<StatusEntry> enroll(const std::string& name);
  // The kernel thread ids of every enrollment so far.
  std::vector<int> enrolled_threads() const;
  // This process's actors, then the other nodes' as last reported.
  std::vector<actors::actor_status> snapshot() const;
  std::vector<actors::actor_status> local_snapshot() const;
  // When one of this process's entries of `kind` is stalled (StatusEntry::stalled): each stalled
  // one, then where the others of that kind are (whereabouts), since a rank stuck in a collective
  // waits for one stuck elsewhere.
  std::optional<std::string> find_stall(const std::string& kind, const StallLimits& limits) const;
  void set_remote(int64_t node, std::vector<actors::actor_status> actors);

  void update_job(const std::function<void(JobStatus&)>& change);
  JobStatus job() const;
  int64_t node() const { return node_; }
  // The steps as the page plots them (node 0's).
  StepRecord& steps() { return steps_; }
  const StepRecord& steps() const { return steps_; }

 private:
  int64_t node_;
  mutable std::mutex mutex_;
  std::vector<std::weak_ptr<StatusEntry>> entries_;
  std::vector<int> threads_;
  std::map<int64_t, std::vector<actors::actor_status>> remote_;
  JobStatus job_;
  StepRecord steps_;
};

}  // namespace troupe::actors
