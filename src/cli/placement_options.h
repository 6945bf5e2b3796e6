// The flags that place a process in a job of several (`--nnodes N --node-rank R --rdzv HOST:PORT`),
// shared by `troupe train` and `troupe_bench throughput`; unset ones come from SLURM's variables.
#pragma once
#include <optional>
#include <string>

#include "config/job_config.h"
#include "runtime/node_placement.h"

namespace CLI { class App; }

namespace troupe::cli {

struct PlacementFlags {
  std::optional<int> nnodes, node_rank;
  std::string rdzv;
  // Also sets cfg's job.local_ranks where the placement fixes it (one rank per SLURM task).
  // std::invalid_argument names the flag, variable or key that is wrong.
  runtime::NodePlacement resolve(config::JobConfig& cfg) const;
};

// `flags` must outlive the command's parsing.
void add_placement_options(CLI::App& command, PlacementFlags& flags);

}  // namespace troupe::cli
