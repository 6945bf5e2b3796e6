// For autograd functions that compute their gradients ahead, in the forward (the fused losses):
// a weight gradient accumulated chunk by chunk, and the incoming gradient applied afterwards.
#pragma once
#include <ATen/core/Tensor.h>

namespace troupe::kernels {

// dest = a · b, or dest += a · b when `add`, in dest's dtype. On CUDA an fp32 dest of bf16
// operands is the GEMM's own output (cuBLAS accumulates in fp32 and writes it so); elsewhere a
// product in the operands' dtype, then cast.
void product_into(at::Tensor dest, const at::Tensor& a, const at::Tensor& b, bool add);

// A gradient computed for an incoming gradient of 1, times `scale` (a scalar tensor). On CUDA in
// place, and only when the scale is not 1 (the device reads it: the host never waits), so the
// caller must hold the only reference and ask once; elsewhere a new tensor.
at::Tensor scale_precomputed(const at::Tensor& grad, const at::Tensor& scale);

}  // namespace troupe::kernels
