// Data loader actor (detached: tokenizing and slicing must not occupy a scheduler thread).
#pragma once
#include <caf/fwd.hpp>

#include <memory>

#include "config/job_config.h"
#include "data/data_position.h"

namespace troupe::actors { class StatusBoard; }

namespace troupe::actors {

// Loads the tokenizer and corpus, then answers each credit from `consumer` with one batch
// of [local_batch_size, seq_len]. Reports failures to `supervisor` as (failure_atom, text).
// `rank` names it; `share` is its data-parallel rank's part of the dataset.
caf::actor spawn_data_loader(caf::actor_system& sys, const config::JobConfig& cfg, int rank, data::DataShare share,
                             caf::actor supervisor, std::shared_ptr<actors::StatusBoard> board);

}  // namespace troupe::actors
