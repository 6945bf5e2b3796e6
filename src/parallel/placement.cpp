#include "parallel/placement.h"

#include <algorithm>
#include <stdexcept>

namespace troupe::parallel {

Placement Placement::split(std::vector<MeshDim> mesh, int64_t dim, int64_t index, int64_t parts) const {
  if (dim < 0 || dim >= static_cast<int64_t>(global_shape.size()))
    throw std::logic_error("a placement cannot split dimension " + std::to_string(dim) + " of a " +
                           std::to_string(global_shape.size()) + "-d tensor");
  auto out = *this;
  out.splits.push_back({std::move(mesh), dim, index, parts});
  return out;
}

checkpoint::ShardBox Placement::box() const {
  checkpoint::ShardBox b{std::vector<int64_t>(global_shape.size(), 0), global_shape};
  for (const auto& s : splits) {
    // torch.chunk's sizes: ceil(n / parts) each, the last ones short or empty.
    const auto n = b.lengths[s.dim];
    const auto chunk = (n + s.parts - 1) / s.parts;
    const auto begin = std::min(n, chunk * s.index);
    b.offsets[s.dim] += begin;
    b.lengths[s.dim] = std::min(n, begin + chunk) - begin;
  }
  return b;
}

bool Placement::split_over(MeshDim d) const {
  for (const auto& s : splits)
    if (std::find(s.mesh.begin(), s.mesh.end(), d) != s.mesh.end()) return true;
  return false;
}

std::vector<std::vector<MeshDim>> Placement::split_groups() const {
  std::vector<std::vector<MeshDim>> out;
  for (const auto& s : splits)
    if (std::find(out.begin(), out.end(), s.mesh) == out.end()) out.push_back(s.mesh);
  return out;
}

bool Placement::saved_by(const DeviceMesh& mesh) const {
  // An expert's piece: ep and efsdp between them cover dp_shard x cp x tp.
  const auto dims = split_over(MeshDim::ep)
                        ? std::vector{MeshDim::dp_replicate, MeshDim::efsdp}
                        : std::vector{MeshDim::dp_replicate, MeshDim::dp_shard, MeshDim::cp, MeshDim::tp};
  for (auto d : dims)
    if (!split_over(d) && mesh.coord(d) != 0) return false;
  // A part held alike by several ranks of its dimension (fewer parts than ranks): the first.
  for (const auto& s : splits)
    if (s.mesh.size() == 1) {
      const auto ranks = mesh.dims().of(s.mesh.front());
      if (s.parts < ranks && mesh.coord(s.mesh.front()) % (ranks / s.parts) != 0) return false;
    }
  return true;
}

}  // namespace troupe::parallel
