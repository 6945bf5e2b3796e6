// Metrics sink actor: turns step statistics into the console line and the JSONL record.
// Detached: it writes files, and file writes never run on a shared scheduler thread.
#pragma once
#include <caf/fwd.hpp>

#include <memory>

#include "config/job_config.h"

namespace troupe::actors { class StatusBoard; }

namespace troupe::actors {

// Logs at step 1, every metrics.log_freq steps and the last step; every step goes to
// <dump_folder>/metrics.jsonl (metrics_rank<R>.jsonl per rank with save_for_all_ranks).
caf::actor spawn_metrics_sink(caf::actor_system& sys, const config::JobConfig& cfg, int rank,
                              std::shared_ptr<actors::StatusBoard> board);

}  // namespace troupe::actors
