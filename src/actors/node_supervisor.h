// Node supervisor actor: spawns and monitors every actor of this process, starts the step
// clock, and ends the job: on the coordinator's done, on any actor's failure, or on a stop.
#pragma once
#include <caf/fwd.hpp>

#include <future>
#include <memory>

#include "config/job_config.h"
#include "runtime/train_outcome.h"

namespace troupe::runtime { class StatusBoard; }

namespace troupe::actors {

// The outcome is delivered once, when the job has ended and every child has been told to exit.
caf::actor spawn_node_supervisor(caf::actor_system& sys, const config::JobConfig& cfg, int64_t vocab_size,
                                 std::shared_ptr<runtime::StatusBoard> board,
                                 std::shared_ptr<std::promise<runtime::TrainOutcome>> outcome);

}  // namespace troupe::actors
