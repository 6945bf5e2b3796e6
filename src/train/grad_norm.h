// Gradient-norm clipping without a host sync mid-step (libtorch's clip_grad_norm_ reads the norm
// back before returning): the norm stays on the device until the step has been queued.
#pragma once
#include <ATen/core/Tensor.h>

#include <vector>

namespace troupe::train {

// The sum of squares of every element, as an fp32 device scalar. On the CPU each tensor's norm
// is accumulated in fp64: ATen's fp32 CPU norms drift by ~1e-4 relative over a large
// gradient, more than the difference a sharded layout should make.
at::Tensor squared_l2_norm(const std::vector<at::Tensor>& grads);

// Scales the grads in place by min(1, max_norm / (total + 1e-6)).
void scale_to_norm(const std::vector<at::Tensor>& grads, const at::Tensor& total, double max_norm);

}  // namespace troupe::train
