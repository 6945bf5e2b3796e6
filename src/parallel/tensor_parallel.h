// Tensor parallelism's side in parallel/: the cut of each parameter to this rank's piece, and
// the sum over the tp ranks of the gradients of the parameters several of them hold alike (the
// norms, whole on all: each rank's gradient covers its part of the sequence, or its heads; a kv
// head's k and v on the ranks whose q heads it serves).
#pragma once
#include <vector>

#include "comm/communicator.h"
#include "models/rank_group.h"
#include "parallel/placement.h"

namespace troupe::parallel {

// `parameter` cut in place to this rank's piece of its placement (the sharding plan's split):
// it stays the same tensor, so the modules, `owned` and later FSDP see the new shape.
void keep_piece(at::Tensor& parameter, const Placement& placement);

// A trained tensor that several tp ranks hold alike: whole (parts 1) or part `part` of `parts`
// (k and v of fewer kv heads than ranks), the same on the tp / parts ranks holding that part.
struct TpReplicated {
  at::Tensor tensor;
  int64_t part = 0, parts = 1;
};

// Each tensor's grad becomes the sum of the grads of the tp ranks holding the same part (one
// all-reduce over the group for all of them: each part in its own slot, the others zero).
void sum_partial_gradients(const std::vector<TpReplicated>& tensors, comm::Communicator& tp);

}  // namespace troupe::parallel
