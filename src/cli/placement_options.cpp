#include "cli/placement_options.h"

#include <CLI/CLI.hpp>

#include <cstdlib>

namespace troupe::cli {

runtime::NodePlacement PlacementFlags::resolve(config::JobConfig& cfg) const {
  auto placement = runtime::resolve_placement(nnodes, node_rank, rdzv, [](const char* name) { return std::getenv(name); });
  cfg.job.local_ranks = runtime::local_ranks_under(placement, cfg.job.local_ranks);
  return placement;
}

void add_placement_options(CLI::App& command, PlacementFlags& flags) {
  command.add_option_function<int>("--nnodes", [&flags](int n) { flags.nnodes = n; },
                                   "nodes in the job, one troupe process each (default: from SLURM, else 1)");
  command.add_option_function<int>("--node-rank", [&flags](int r) { flags.node_rank = r; },
                                   "this node's rank, 0..nnodes-1 (default: from SLURM, else 0)");
  command.add_option("--rdzv", flags.rdzv,
                     "HOST:PORT where node 0 listens for the others (default: TROUPE_RDZV, or under SLURM "
                     "the job's first node, port 29500)");
}

}  // namespace troupe::cli
