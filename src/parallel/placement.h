// Where a tensor of the model lives across the mesh (torchtitan's DTensor placements, made
// concrete for one rank): the whole tensor's shape, and each split of it, in the order applied,
// as (mesh dimension, tensor dimension, this rank's chunk of how many). FSDP, the gradient norm
// and checkpoint save, load and resharding read it instead of assuming "dim 0 of one group".
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "checkpoint/shard_box.h"
#include "parallel/device_mesh.h"

namespace troupe::parallel {

struct Placement {
  struct Split {
    // The mesh dimensions whose ranks (flattened, in mesh order) cut the piece: one, or FSDP's
    // dp_shard and cp together.
    std::vector<MeshDim> mesh;
    int64_t dim;
    int64_t index;  // this rank's chunk (torch.chunk sizes) ...
    int64_t parts;  // ... of this many (fewer than the ranks: each held by ranks / parts of them)
  };
  std::vector<int64_t> global_shape;
  std::vector<Split> splits;  // empty: whole on every rank that holds it

  static Placement whole(std::vector<int64_t> shape) { return {std::move(shape), {}}; }
  // This placement split once more: `mesh` cuts tensor dim `dim` of the piece it has so far.
  Placement split(std::vector<MeshDim> mesh, int64_t dim, int64_t index, int64_t parts) const;
  Placement split(MeshDim mesh, int64_t dim, int64_t index, int64_t parts) const {
    return split(std::vector<MeshDim>{mesh}, dim, index, parts);
  }

  // This rank's piece of the whole tensor (empty lengths where a chunk is past the end).
  checkpoint::ShardBox box() const;
  bool split_over(MeshDim d) const;
  // The groups (of mesh dimensions, as the splits name them) a reduction over the whole tensor
  // (its squared norm) must sum across.
  std::vector<std::vector<MeshDim>> split_groups() const;
  // Of the ranks holding the same piece, whether this one writes it to a checkpoint: the one at
  // coordinate 0 of every data-parallel, context and tensor dimension the piece is not split over,
  // and first among the ranks of a split that holds fewer parts than it has ranks.
  bool saved_by(const DeviceMesh& mesh) const;
};

}  // namespace troupe::parallel
