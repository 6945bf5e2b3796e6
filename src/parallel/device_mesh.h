// The ranks of a job as a grid over (pp, dp_replicate, dp_shard, cp, tp), torchtitan's order
// and meaning, tp varying fastest. A rank's groups along one or more dimensions are the ranks
// that share its coordinates in every other dimension.
// Expert parallelism borrows its ranks (torchtitan's rule dp_shard x cp x tp = efsdp x ep): of
// those ranks flattened in mesh order, ep is the fastest-varying factor and efsdp (which shards
// each expert FSDP-style) the rest. They are two more dimensions, derived, each a group alone.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "config/job_config.h"

namespace troupe::parallel {

enum class MeshDim { pp = 0, dp_replicate = 1, dp_shard = 2, cp = 3, tp = 4, ep = 5, efsdp = 6 };

struct ParallelDims {
  std::array<int64_t, 5> degree{1, 1, 1, 1, 1};  // indexed by MeshDim, pp to tp
  int64_t expert = 1;                            // ep

  int64_t of(MeshDim d) const;
  int64_t world() const;
  int64_t dp() const { return of(MeshDim::dp_replicate) * of(MeshDim::dp_shard); }

  // data_parallel_shard_degree = -1 takes what the others leave of the world; every other
  // mismatch (and an expert_parallel_degree that does not divide dp_shard x cp x tp) throws
  // std::invalid_argument naming the keys and the world size.
  static ParallelDims resolve(const config::ParallelismSection& p, int64_t world);
};

class DeviceMesh {
 public:
  DeviceMesh(ParallelDims dims, int rank);

  const ParallelDims& dims() const { return dims_; }
  int rank() const { return rank_; }
  int64_t coord(MeshDim d) const;
  // The global ranks of this rank's group over `dims` (ascending) and this rank's index in it.
  std::vector<int> group(const std::vector<MeshDim>& dims) const;
  int rank_in(const std::vector<MeshDim>& dims) const;
  // Unique per group across the job, the same on every member: e.g. "dp_shard[pp0,dp_replicate1,cp0,tp0]".
  std::string group_name(const std::vector<MeshDim>& dims) const;
  // This rank's place on the dimensions of degree above 1, as "pp 0/2, dp_shard 1/2, tp 1/2"
  // (the console shows it), or "one rank".
  std::string coordinates() const;

 private:
  int index(const std::array<int64_t, 5>& coord) const;
  // This rank's place among the dp_shard x cp x tp ranks, and the coordinates of place f there.
  int64_t expert_flat() const;
  std::array<int64_t, 5> with_expert_flat(int64_t f) const;
  ParallelDims dims_;
  int rank_;
  std::array<int64_t, 5> coord_{};
};

const char* dim_name(MeshDim d);

}  // namespace troupe::parallel
