// Coordinator actor: the step clock. Event-based: it only sends requests and reacts to replies.
#pragma once
#include <caf/fwd.hpp>

#include <memory>
#include <vector>

#include "config/job_config.h"

namespace troupe::actors { class StatusBoard; }

namespace troupe::actors {

// `stages`: one per rank, rank order; `writers`: their checkpoint writers (empty when
// checkpoints are off). Every step goes to every stage; rank 0 reports the job's loss.
// On start, asks the stages for steps 1..training.steps one after another, forwards each step's
// statistics to `sink`, and ends on the last step, a stop request (after the running step), a
// non-finite loss or a failed step: it flushes the sink, then tells `supervisor`
// (done_atom, exit_code, message, all step statistics).
// Checkpoints (when `writer`, rank 0's checkpoint writer, is valid): it first asks the stage
// which step it restored and starts after it; it saves every checkpoint.interval steps and
// after the last, commits a step once every rank's writer has acknowledged it, and finishes
// only after the last commit.
caf::actor spawn_coordinator(caf::actor_system& sys, const config::JobConfig& cfg, std::vector<caf::actor> stages,
                             caf::actor sink, caf::actor supervisor, std::vector<caf::actor> writers,
                             std::shared_ptr<actors::StatusBoard> board);

}  // namespace troupe::actors
