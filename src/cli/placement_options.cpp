#include "cli/placement_options.h"

#include <CLI/CLI.hpp>

#include <cstdlib>

namespace troupe::cli {

runtime::NodePlacement PlacementFlags::resolve() const {
  return runtime::resolve_placement(nnodes, node_rank, rdzv, [](const char* name) { return std::getenv(name); });
}

void add_placement_options(CLI::App& command, PlacementFlags& flags) {
  command.add_option_function<int>("--nnodes", [&flags](int n) { flags.nnodes = n; },
                                   "nodes in the job, one troupe process each (default: SLURM_NNODES or 1)");
  command.add_option_function<int>("--node-rank", [&flags](int r) { flags.node_rank = r; },
                                   "this node's rank, 0..nnodes-1 (default: SLURM_NODEID or 0)");
  command.add_option("--rdzv", flags.rdzv,
                     "HOST:PORT where node 0 listens for the others (default: TROUPE_RDZV, or under SLURM "
                     "the job's first node, port 29500)");
}

}  // namespace troupe::cli
