#include "parallel/device_mesh.h"

#include <algorithm>
#include <stdexcept>

namespace troupe::parallel {

namespace {
constexpr std::array<MeshDim, 5> kAll{MeshDim::pp, MeshDim::dp_replicate, MeshDim::dp_shard, MeshDim::cp, MeshDim::tp};

bool contains(const std::vector<MeshDim>& dims, MeshDim d) { return std::find(dims.begin(), dims.end(), d) != dims.end(); }
}  // namespace

const char* dim_name(MeshDim d) {
  switch (d) {
    case MeshDim::pp: return "pp";
    case MeshDim::dp_replicate: return "dp_replicate";
    case MeshDim::dp_shard: return "dp_shard";
    case MeshDim::cp: return "cp";
    case MeshDim::tp: return "tp";
    case MeshDim::ep: return "ep";
    case MeshDim::efsdp: return "efsdp";
  }
  return "?";
}

int64_t ParallelDims::of(MeshDim d) const {
  if (d == MeshDim::ep) return expert;
  if (d == MeshDim::efsdp) return degree[2] * degree[3] * degree[4] / expert;
  return degree[static_cast<size_t>(d)];
}

int64_t ParallelDims::world() const {
  int64_t w = 1;
  for (auto d : degree) w *= d;
  return w;
}

ParallelDims ParallelDims::resolve(const config::ParallelismSection& p, int64_t world) {
  ParallelDims dims;
  dims.degree = {p.pipeline_parallel_degree, p.data_parallel_replicate_degree, p.data_parallel_shard_degree,
                 p.context_parallel_degree, p.tensor_parallel_degree};
  const std::string others = "parallelism: data_parallel_replicate_degree " + std::to_string(p.data_parallel_replicate_degree) +
                             " x tensor_parallel_degree " + std::to_string(p.tensor_parallel_degree) +
                             " x pipeline_parallel_degree " + std::to_string(p.pipeline_parallel_degree) +
                             " x context_parallel_degree " + std::to_string(p.context_parallel_degree);
  if (p.data_parallel_shard_degree == -1) {
    dims.degree[static_cast<size_t>(MeshDim::dp_shard)] = 1;
    const auto rest = dims.world();
    if (world % rest != 0)
      throw std::invalid_argument(others + " = " + std::to_string(rest) + " does not divide the world size " +
                                  std::to_string(world));
    dims.degree[static_cast<size_t>(MeshDim::dp_shard)] = world / rest;
  } else if (dims.world() != world) {
    throw std::invalid_argument(others + " x data_parallel_shard_degree " + std::to_string(p.data_parallel_shard_degree) +
                                " = " + std::to_string(dims.world()) + ", but the world has " + std::to_string(world) +
                                " ranks");
  }
  dims.expert = p.expert_parallel_degree;
  const auto borrowed = dims.of(MeshDim::dp_shard) * dims.of(MeshDim::cp) * dims.of(MeshDim::tp);
  if (dims.expert < 1 || borrowed % dims.expert != 0)
    throw std::invalid_argument("parallelism.expert_parallel_degree " + std::to_string(dims.expert) +
                                " does not divide data_parallel_shard_degree x context_parallel_degree x "
                                "tensor_parallel_degree = " + std::to_string(borrowed) +
                                " (the ranks expert parallelism takes its own from)");
  return dims;
}

DeviceMesh::DeviceMesh(ParallelDims dims, int rank) : dims_(dims), rank_(rank) {
  if (rank < 0 || rank >= dims.world())
    throw std::invalid_argument("rank " + std::to_string(rank) + " outside a world of " + std::to_string(dims.world()));
  int64_t rest = rank;
  for (int i = 4; i >= 0; --i) {
    coord_[i] = rest % dims.degree[i];
    rest /= dims.degree[i];
  }
}

int64_t DeviceMesh::coord(MeshDim d) const {
  if (d == MeshDim::ep) return expert_flat() % dims_.expert;
  if (d == MeshDim::efsdp) return expert_flat() / dims_.expert;
  return coord_[static_cast<size_t>(d)];
}

int64_t DeviceMesh::expert_flat() const {
  return (coord_[2] * dims_.degree[3] + coord_[3]) * dims_.degree[4] + coord_[4];
}

std::array<int64_t, 5> DeviceMesh::with_expert_flat(int64_t f) const {
  auto c = coord_;
  c[4] = f % dims_.degree[4];
  c[3] = f / dims_.degree[4] % dims_.degree[3];
  c[2] = f / dims_.degree[4] / dims_.degree[3];
  return c;
}

int DeviceMesh::index(const std::array<int64_t, 5>& coord) const {
  int64_t r = 0;
  for (size_t i = 0; i < 5; ++i) r = r * dims_.degree[i] + coord[i];
  return static_cast<int>(r);
}

std::vector<int> DeviceMesh::group(const std::vector<MeshDim>& dims) const {
  std::vector<int> ranks{};
  if (contains(dims, MeshDim::ep) || contains(dims, MeshDim::efsdp)) {
    if (dims.size() != 1) throw std::logic_error("a group over ep or efsdp takes no other mesh dimension");
    // ep: the neighbours in the flattened dp_shard x cp x tp ranks; efsdp: every ep-th of them.
    const int64_t ep = dims_.expert, f = expert_flat(), n = dims_.of(dims.front());
    for (int64_t j = 0; j < n; ++j)
      ranks.push_back(index(with_expert_flat(dims.front() == MeshDim::ep ? f / ep * ep + j : j * ep + f % ep)));
    return ranks;  // ascending: the flattened places are
  }
  // Every coordinate over `dims`, the others fixed at ours.
  std::vector<std::array<int64_t, 5>> coords{coord_};
  for (auto d : kAll) {
    if (!contains(dims, d)) continue;
    std::vector<std::array<int64_t, 5>> next;
    for (const auto& c : coords)
      for (int64_t v = 0; v < dims_.of(d); ++v) {
        auto e = c;
        e[static_cast<size_t>(d)] = v;
        next.push_back(e);
      }
    coords = std::move(next);
  }
  for (const auto& c : coords) ranks.push_back(index(c));
  std::sort(ranks.begin(), ranks.end());
  return ranks;
}

int DeviceMesh::rank_in(const std::vector<MeshDim>& dims) const {
  const auto g = group(dims);
  return static_cast<int>(std::find(g.begin(), g.end(), rank_) - g.begin());
}

std::string DeviceMesh::group_name(const std::vector<MeshDim>& dims) const {
  if (dims == std::vector{MeshDim::ep} || dims == std::vector{MeshDim::efsdp}) {
    const auto other = dims.front() == MeshDim::ep ? MeshDim::efsdp : MeshDim::ep;
    return std::string(dim_name(dims.front())) + "[pp" + std::to_string(coord(MeshDim::pp)) + ",dp_replicate" +
           std::to_string(coord(MeshDim::dp_replicate)) + "," + dim_name(other) + std::to_string(coord(other)) + "]";
  }
  std::string name, fixed;
  for (auto d : kAll) {
    if (contains(dims, d)) {
      name += (name.empty() ? "" : "+") + std::string(dim_name(d));
    } else {
      fixed += (fixed.empty() ? "" : ",") + std::string(dim_name(d)) + std::to_string(coord(d));
    }
  }
  return name + "[" + fixed + "]";
}

std::string DeviceMesh::coordinates() const {
  std::string out;
  for (auto d : {MeshDim::pp, MeshDim::dp_replicate, MeshDim::dp_shard, MeshDim::cp, MeshDim::tp, MeshDim::ep})
    if (dims_.of(d) > 1)
      out += (out.empty() ? "" : ", ") + std::string(dim_name(d)) + " " + std::to_string(coord(d)) + "/" +
             std::to_string(dims_.of(d));
  return out.empty() ? "one rank" : out;
}

}  // namespace troupe::parallel
