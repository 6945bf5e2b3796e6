#include "runtime/node_placement.h"

#include <unistd.h>

#include <stdexcept>

namespace troupe::runtime {

namespace {

int parse_int(const std::string& text, const std::string& what) {
  size_t used = 0;
  int value = 0;
  try {
    value = std::stoi(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != text.size()) throw std::invalid_argument(what + ": '" + text + "' is not an integer");
  return value;
}

std::optional<int> env_int(const Environment& env, const char* name) {
  const char* v = env(name);
  if (!v || !*v) return std::nullopt;
  return parse_int(v, name);
}

void set_address(NodePlacement& p, const std::string& address, const std::string& what) {
  const auto colon = address.rfind(':');
  if (colon == std::string::npos) {
    p.rdzv_host = address;
  } else {
    p.rdzv_host = address.substr(0, colon);
    p.rdzv_port = parse_int(address.substr(colon + 1), what + " port");
  }
  if (p.rdzv_host.empty()) throw std::invalid_argument(what + ": '" + address + "' has no host");
  if (p.rdzv_port < 1 || p.rdzv_port > 65535) throw std::invalid_argument(what + ": port must be 1..65535");
}

// A step of more tasks than nodes (srun --ntasks-per-node=8) makes each task a node of one rank.
void place_from_slurm(NodePlacement& p, const Environment& env) {
  const auto tasks = env_int(env, "SLURM_STEP_NUM_TASKS");
  const auto machines = env_int(env, "SLURM_STEP_NUM_NODES");
  if (tasks && machines && *tasks > *machines) {
    p.nnodes = *tasks;
    p.node_rank = env_int(env, "SLURM_PROCID").value_or(0);
    p.ranks_per_node = 1;
    // --gpus-per-task=1 leaves the task one GPU; otherwise it sees the machine's and takes its own.
    const char* visible = env("CUDA_VISIBLE_DEVICES");
    const bool one_gpu = visible && *visible && std::string(visible).find(',') == std::string::npos;
    p.first_gpu = one_gpu ? 0 : env_int(env, "SLURM_LOCALID").value_or(0);
    return;
  }
  p.nnodes = machines ? *machines : env_int(env, "SLURM_NNODES").value_or(1);
  p.node_rank = env_int(env, "SLURM_NODEID").value_or(0);
}

}  // namespace

std::string first_slurm_host(const std::string& nodelist) {
  const auto bracket = nodelist.find('[');
  const auto comma = nodelist.find(',');
  if (bracket == std::string::npos || (comma != std::string::npos && comma < bracket))
    return nodelist.substr(0, comma);
  // prefix[first-last,...]: the first number keeps its zero padding.
  const auto end = nodelist.find_first_of("-,]", bracket + 1);
  return nodelist.substr(0, bracket) + nodelist.substr(bracket + 1, end - bracket - 1);
}

NodePlacement resolve_placement(std::optional<int> nnodes, std::optional<int> node_rank, const std::string& rdzv,
                                const Environment& env) {
  NodePlacement p;
  const bool slurm = env("SLURM_JOB_ID") != nullptr;
  if (slurm) place_from_slurm(p, env);
  if (nnodes || node_rank) p.ranks_per_node = p.first_gpu = 0;  // placed by hand: job.local_ranks decides
  if (nnodes) p.nnodes = *nnodes;
  if (node_rank) p.node_rank = *node_rank;
  if (p.nnodes < 1) throw std::invalid_argument("--nnodes must be at least 1");
  if (p.node_rank < 0 || p.node_rank >= p.nnodes)
    throw std::invalid_argument("--node-rank " + std::to_string(p.node_rank) + " is outside 0.." +
                                std::to_string(p.nnodes - 1));
  if (!rdzv.empty()) {
    set_address(p, rdzv, "--rdzv");
  } else if (const char* t = env("TROUPE_RDZV"); t && *t) {
    set_address(p, t, "TROUPE_RDZV");
  } else if (const char* list = env("SLURM_JOB_NODELIST"); slurm && list && *list) {
    p.rdzv_host = first_slurm_host(list);
  } else if (p.nnodes > 1) {
    throw std::invalid_argument("--nnodes " + std::to_string(p.nnodes) + " needs --rdzv HOST:PORT (node 0's address)");
  }
  return p;
}

int64_t local_ranks_under(const NodePlacement& placement, int64_t configured) {
  if (placement.ranks_per_node == 0) return configured;
  if (configured > 0 && configured != placement.ranks_per_node)
    throw std::invalid_argument("job.local_ranks = " + std::to_string(configured) + ", but SLURM runs " +
                                std::to_string(placement.nnodes) +
                                " tasks in this step, more than its nodes: each task hosts one rank (drop "
                                "job.local_ranks, or launch one task per node)");
  return placement.ranks_per_node;
}

std::string host_name() {
  char host[256] = {};
  if (gethostname(host, sizeof host - 1) != 0) return "unknown";
  return host;
}

}  // namespace troupe::runtime
