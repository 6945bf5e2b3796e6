// Stage actor: owns the model's units and the optimizer of one rank, and runs a step when the
// coordinator asks and its micro-batches have arrived. Detached: a step is seconds of CPU work
// that must not starve the scheduler threads the other actors share.
#pragma once
#include <caf/fwd.hpp>

#include <memory>

#include "config/job_config.h"
#include "models/architecture.h"
#include "data/data_position.h"
#include "parallel/rank_context.h"

namespace troupe::actors { class StatusBoard; }

namespace troupe::actors {

// `prefetch`: batches kept requested ahead of the running step (at least one step's worth).
// `rank`: who this stage is in the job; `share`: its data-parallel part (validation data).
caf::actor spawn_stage(caf::actor_system& sys, const config::JobConfig& cfg, models::ArchitecturePtr model,
                       parallel::RankContext rank, data::DataShare share, caf::actor loader, caf::actor supervisor,
                       std::shared_ptr<actors::StatusBoard> board);

}  // namespace troupe::actors
