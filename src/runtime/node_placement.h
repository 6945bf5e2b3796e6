// Where this process sits in a job of several: `--nnodes N --node-rank R --rdzv HOST:PORT`, or
// under SLURM the same from its variables. A "node" is one troupe process: normally one per machine
// driving every GPU there; under SLURM with several tasks per machine, each task is one, of one
// rank.
#pragma once
#include <cstdint>
#include <functional>
#include <optional>
#include <string>

namespace troupe::runtime {

struct NodePlacement {
  int nnodes = 1;
  int node_rank = 0;
  std::string rdzv_host = "127.0.0.1";  // node 0's address
  int rdzv_port = 29500;                // node 0 listens here for the other nodes (CAF)
  int ranks_per_node = 0;               // 0: job.local_ranks decides (every visible GPU)
  int first_gpu = 0;                    // the CUDA device of this node's local rank 0
};

using Environment = std::function<const char*(const char*)>;

// Flags win; unset ones come from SLURM's variables and (for the address) TROUPE_RDZV, else the
// first host of SLURM_JOB_NODELIST on port 29500. Inside an srun step of more tasks than nodes
// (`--ntasks-per-node=8`), each task is a node of one rank: SLURM_PROCID of SLURM_STEP_NUM_TASKS, on
// GPU SLURM_LOCALID (or on the one GPU CUDA_VISIBLE_DEVICES leaves it, `--gpus-per-task=1`);
// otherwise SLURM_NODEID of SLURM_STEP_NUM_NODES (SLURM_NNODES outside a step). Either flag
// places by hand: then job.local_ranks decides the ranks, from GPU 0.
// std::invalid_argument names the flag or variable that is wrong.
NodePlacement resolve_placement(std::optional<int> nnodes, std::optional<int> node_rank, const std::string& rdzv,
                                const Environment& env);

// The first host of a SLURM node list: "gpu[07-09,12],cpu1" -> "gpu07".
std::string first_slurm_host(const std::string& nodelist);

// job.local_ranks under this placement: `configured` (-1: every visible GPU) unless the placement
// fixes it; std::invalid_argument when the two disagree.
int64_t local_ranks_under(const NodePlacement& placement, int64_t configured);

// This machine's host name ("unknown" if the system will not say).
std::string host_name();

}  // namespace troupe::runtime
