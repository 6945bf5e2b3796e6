// Where this process sits in a job of several nodes: `--nnodes N --node-rank R --rdzv HOST:PORT`,
// or under SLURM the same from its variables (one task per node).
#pragma once
#include <functional>
#include <optional>
#include <string>

namespace troupe::runtime {

struct NodePlacement {
  int nnodes = 1;
  int node_rank = 0;
  std::string rdzv_host = "127.0.0.1";  // node 0's address
  int rdzv_port = 29500;                // node 0 listens here for the other nodes (CAF)
};

using Environment = std::function<const char*(const char*)>;

// Flags win; unset ones come from SLURM_NNODES, SLURM_NODEID and (for the address)
// TROUPE_RDZV, else the first host of SLURM_JOB_NODELIST on port 29500. std::invalid_argument
// names the flag or variable that is wrong.
NodePlacement resolve_placement(std::optional<int> nnodes, std::optional<int> node_rank, const std::string& rdzv,
                                const Environment& env);

// The first host of a SLURM node list: "gpu[07-09,12],cpu1" -> "gpu07".
std::string first_slurm_host(const std::string& nodelist);

}  // namespace troupe::runtime
