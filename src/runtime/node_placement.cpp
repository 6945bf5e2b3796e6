#include "runtime/node_placement.h"

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
  p.nnodes = nnodes ? *nnodes : (slurm ? env_int(env, "SLURM_NNODES").value_or(1) : 1);
  p.node_rank = node_rank ? *node_rank : (slurm ? env_int(env, "SLURM_NODEID").value_or(0) : 0);
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

}  // namespace troupe::runtime
