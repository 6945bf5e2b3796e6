// The kernels as differentiable tensor ops. On CUDA tensors (in a build with CUDA) they run the
// hand-written kernels of this folder; elsewhere the same maths as ATen compositions, which the
// Hugging Face oracle test checks on the CPU.
#pragma once
#include <ATen/core/Tensor.h>

namespace troupe::kernels {

// Normalises in fp32, returns x's dtype; weight is cast to x's dtype first.
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);

// x: [batch, seq, heads, head_dim]; cos/sin: [>= seq, head_dim/2] fp32 (or fp64 for fp64 x).
at::Tensor rotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

at::Tensor swiglu(const at::Tensor& gate, const at::Tensor& up);

// Mean cross-entropy of (hidden · weightᵀ) against targets. On CUDA the logits are formed
// `chunk_rows` rows at a time and their gradient is computed with the loss, so the full
// [tokens, vocab] fp32 logits never exist; `weight` may be the fp32 master (cast per chunk).
at::Tensor linear_cross_entropy(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& targets,
                                int64_t chunk_rows = 4096);

}  // namespace troupe::kernels
