// Node supervisor actor: spawns and monitors every actor of this process, starts the step
// clock, and ends the job: on the coordinator's done, on any actor's failure, or on a stop.
#pragma once
#include <caf/actor.hpp>

#include <future>
#include <memory>

#include "config/job_config.h"
#include "models/architecture.h"
#include "runtime/node_placement.h"
#include "actors/train_outcome.h"

namespace troupe::actors { class StatusBoard; }

namespace troupe::actors {

// This node's place in the job and its links to the others.
struct NodeLinks {
  runtime::NodePlacement placement;
  caf::actor key_value_store;  // node 0's; the ranks' rendezvous when there are several nodes
  caf::actor node0;            // node 0's supervisor (a proxy); invalid on node 0
};

// The outcome is delivered once, when the job has ended and every child has been told to exit.
// Node 0 hosts the coordinator and the metrics sink; every node hosts its ranks' stages,
// loaders and checkpoint writers.
caf::actor spawn_node_supervisor(caf::actor_system& sys, const config::JobConfig& cfg, models::ArchitecturePtr model,
                                 NodeLinks links, std::shared_ptr<actors::StatusBoard> board,
                                 std::shared_ptr<std::promise<actors::TrainOutcome>> outcome);

}  // namespace troupe::actors
