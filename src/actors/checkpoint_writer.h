// Checkpoint writer actor of one rank: writes host snapshots to disk while training goes on.
// Detached: file writes and fsyncs must never block a scheduler thread.
#pragma once
#include <caf/fwd.hpp>

#include <memory>

#include "config/job_config.h"

namespace troupe::actors { class StatusBoard; }

namespace troupe::actors {

// Rank 0's writer also commits steps, applies checkpoint.keep_latest_k, and at start removes
// what uncommitted writes left behind. Start-up failures go to `supervisor` as failure_atom.
caf::actor spawn_checkpoint_writer(caf::actor_system& sys, const config::JobConfig& cfg, int rank,
                                   caf::actor supervisor, std::shared_ptr<actors::StatusBoard> board);

}  // namespace troupe::actors
