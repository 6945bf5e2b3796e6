// Runs one training job through the actors and waits for it to end.
#pragma once
#include <atomic>
#include <functional>

#include "config/job_config.h"
#include "runtime/node_placement.h"
#include "runtime/train_outcome.h"

namespace caf { class actor_system; class actor; }

namespace troupe::runtime {

struct RunHooks {
  // Set by a signal handler: stop after the running step (checked every few milliseconds).
  const std::atomic<int>* stop_requests = nullptr;
  // Called once the actors exist, with the node supervisor (tests use it to query them).
  std::function<void(caf::actor_system&, const caf::actor& supervisor)> on_started;
  // Called with the outcome as soon as the job has ended, before the teardown: a job of several
  // nodes leaves the process right after, without returning (benchmarks report from here).
  std::function<void(const TrainOutcome&)> on_outcome;
};

// With several nodes, node 0 listens at placement's rendezvous address and waits for the
// others (up to comm.init_timeout_seconds); the others connect to it, retrying that long.
TrainOutcome run_training(const config::JobConfig& cfg, const RunHooks& hooks = {}, const NodePlacement& placement = {});

}  // namespace troupe::runtime
