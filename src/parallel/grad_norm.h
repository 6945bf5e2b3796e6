// Gradient-norm clipping without a host sync mid-step (libtorch's clip_grad_norm_ reads the norm
// back before returning): the norm stays on the device until the step has been queued, and the
// clipping itself happens inside the fused AdamW kernel (its grad_scale divisor) instead of a
// separate pass over every gradient.
#pragma once
#include <ATen/core/Tensor.h>

#include <vector>

#include "comm/communicator.h"

namespace troupe::parallel {

// The sum of squares of every element, as an fp32 device scalar. On the CPU each tensor's norm
// is accumulated in fp64: ATen's fp32 CPU norms drift by ~1e-4 relative over a large
// gradient, more than the difference a sharded layout should make.
at::Tensor squared_l2_norm(const std::vector<at::Tensor>& grads);

// The L2 norm of a gradient split between ranks: the squares of this rank's `grads` are summed
// over each of `groups` in turn (null entries skipped: the dp_shard group, then the pipeline
// group). A device scalar (a double zero when this rank holds no gradient).
at::Tensor global_norm(const std::vector<at::Tensor>& grads, const std::vector<comm::Communicator*>& groups);

// What the optimizer divides the gradients by so that their norm is at most max_norm:
// max(1, (norm + 1e-6) / max_norm), an fp32 scalar on `device`.
at::Tensor clip_divisor(const at::Tensor& norm, double max_norm, at::Device device);

}  // namespace troupe::parallel
