// Tensor parallelism's side in parallel/: the cut of each parameter to this rank's piece, and
// the sum over the tp ranks of the gradients of the parameters they all hold whole (the norms:
// each rank's gradient covers its part of the sequence, or its heads).
#pragma once
#include <vector>

#include "comm/communicator.h"
#include "models/rank_group.h"
#include "parallel/placement.h"

namespace troupe::parallel {

// `parameter` cut in place to this rank's piece of its placement (the sharding plan's split):
// it stays the same tensor, so the modules, `owned` and later FSDP see the new shape.
void keep_piece(at::Tensor& parameter, const Placement& placement);

// grad += the other tp ranks' grads, for each tensor's grad (one all-reduce for all of them).
void sum_partial_gradients(const std::vector<at::Tensor>& tensors, comm::Communicator& tp);

}  // namespace troupe::parallel
