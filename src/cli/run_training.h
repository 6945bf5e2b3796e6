// Runs one training job through the actors and waits for it to end.
#pragma once
#include <atomic>
#include <functional>

#include "config/job_config.h"
#include "runtime/node_placement.h"
#include "actors/train_outcome.h"

namespace caf { class actor_system; class actor; }

namespace troupe::cli {

struct RunHooks {
  // Set by a signal handler: stop after the running step (checked every few milliseconds).
  const std::atomic<int>* stop_requests = nullptr;
  // Called once the actors exist, with the node supervisor (tests use it to query them).
  std::function<void(caf::actor_system&, const caf::actor& supervisor)> on_started;
  // Called with the outcome as soon as the job has ended, before the teardown: a job of several
  // nodes leaves the process right after, without returning (benchmarks report from here).
  std::function<void(const actors::TrainOutcome&)> on_outcome;
};

// The model is configured first (train/job_model.h: config::ConfigError for a bad one).
// With several nodes, node 0 listens at placement's rendezvous address and waits for the
// others (up to comm.init_timeout_seconds); the others connect to it, retrying that long.
actors::TrainOutcome run_training(const config::JobConfig& cfg, const RunHooks& hooks = {},
                                  const runtime::NodePlacement& placement = {});

}  // namespace troupe::cli
