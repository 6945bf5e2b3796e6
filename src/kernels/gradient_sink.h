// Where a weight's gradient goes instead of autograd's: FSDP points each weight of the unit whose
// backward runs at its place in the unit's gradient buffer (the reduce dtype, fp32 by default, in
// the parameter's layout), and Troupe's autograd functions write their weight gradients there in
// fp32 (the projections as their GEMMs' output; the loss projection and the RMSNorm kernels as
// they computed them). Otherwise a gathered bf16 weight gets a bf16 gradient, rounded, then cast
// and copied into that buffer: one more pass over most of the model's gradients each step.
#pragma once
#include <ATen/core/Tensor.h>

namespace troupe::kernels {

// Weights are matched by identity (their TensorImpl), so a weight must stay the same tensor while
// it is registered. Thread-safe: autograd runs backwards on threads of its own.
//
// Registers `weight` as one whose gradient may go to a sink (FSDP's weights, for their lifetime);
// the projections then take the path that writes to sinks on every device.
void register_gradient_sink(const at::Tensor& weight);
void unregister_gradient_sink(const at::Tensor& weight);
bool has_gradient_sink(const at::Tensor& weight);
// Points a registered weight's sink at `dest` (the weight's shape), nothing written yet.
void open_gradient_sink(const at::Tensor& weight, const at::Tensor& dest);
// Detaches the sink from its destination; says whether a gradient was written there.
bool close_gradient_sink(const at::Tensor& weight);

// With an open sink for the weight whose TensorImpl is `weight_key`: writes a · b into it (the
// first write since it opened) or adds it (a weight used twice), and says true; else false.
bool sink_product(const void* weight_key, const at::Tensor& a, const at::Tensor& b);
// The same for a gradient computed already (the weight's shape).
bool sink_gradient(const void* weight_key, const at::Tensor& grad);

}  // namespace troupe::kernels
