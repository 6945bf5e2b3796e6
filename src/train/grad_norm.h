// Gradient-norm clipping without a host sync mid-step (libtorch's clip_grad_norm_ reads the norm
// back before returning): the norm stays on the device until the step has been queued.
#pragma once
#include <ATen/core/Tensor.h>

#include <vector>

#include "comm/communicator.h"

namespace troupe::train {

// The sum of squares of every element, as an fp32 device scalar. On the CPU each tensor's norm
// is accumulated in fp64: ATen's fp32 CPU norms drift by ~1e-4 relative over a large
// gradient, more than the difference a sharded layout should make.
at::Tensor squared_l2_norm(const std::vector<at::Tensor>& grads);

// Scales the grads in place by min(1, max_norm / (total + 1e-6)).
void scale_to_norm(const std::vector<at::Tensor>& grads, const at::Tensor& total, double max_norm);

// Gradient clipping over a gradient split between ranks: the squares of this rank's `grads` are
// summed over each of `groups` in turn (null entries skipped: the dp_shard group, then the
// pipeline group), the grads scaled so that the whole norm is <= max_norm, and that norm returned
// as a device scalar (a double zero when this rank holds no gradient).
at::Tensor clip_to_global_norm(const std::vector<at::Tensor>& grads, double max_norm,
                               const std::vector<comm::Communicator*>& groups);

}  // namespace troupe::train
