// A mixture of experts' routing and token movement as differentiable tensor ops. On CUDA
// tensors (fp32, bf16) they run kernels/moe_routing.cu; elsewhere (CPU, fp64) the same maths as
// ATen compositions, which the Hugging Face oracle tests check.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>

#include "kernels/moe_routing.h"
#include "kernels/weight_services.h"

namespace troupe::kernels {

struct RouteChoice {
  at::Tensor scores;  // [tokens, experts] fp32 (fp64 for fp64 logits), differentiable in the logits
  at::Tensor experts;  // [tokens, top_k] int64
  at::Tensor counts;   // [experts] int64: tokens per expert
};
// logits [tokens, experts]; bias [experts] fp32 or undefined. shape.tokens is taken from logits.
RouteChoice route_choice(const at::Tensor& logits, const at::Tensor& bias, RouteShape shape);

// Where each token's copies go when they are grouped by expert (stable: by expert, then token).
struct Permutation {
  at::Tensor order;      // [tokens * top_k]: the copy (t * top_k + j) at each row of the grouped rows
  at::Tensor positions;  // [tokens * top_k]: the inverse: the row of copy (t * top_k + j)
  at::Tensor counts;     // [experts] int64
  int64_t top_k = 1;
};
Permutation permutation(const at::Tensor& experts, const at::Tensor& counts);

// x [tokens, dim] -> [tokens * top_k, dim], the copies grouped by expert.
at::Tensor permute(const at::Tensor& x, const Permutation& p);
// y [tokens * top_k, dim] grouped by expert, weights [tokens, top_k] fp32 -> [tokens, dim]:
// each token's copies weighted and added (y's dtype).
at::Tensor unpermute(const at::Tensor& y, const at::Tensor& weights, const Permutation& p);

// The routed experts over the token copies: for the rows of each expert e,
// swiglu(x w1[e]ᵀ, x w3[e]ᵀ) w2[e]ᵀ, with x = permute(flat, p); w1, w3 [experts, inter, dim] and
// w2 [experts, dim, inter], the masters, cast to flat's dtype through `services` (their kept
// copies, kernels/weight_copies.h); one grouped GEMM per projection over all experts (libtorch's
// _grouped_mm: no host sync). Returns the rows [tokens * top_k, dim] grouped by
// expert. With `recompute` (activation checkpointing's "op" policy) the backward recomputes the
// copies and SwiGLU's output rather than keeping them: the GEMM outputs are what is kept.
at::Tensor grouped_swiglu(const at::Tensor& flat, const Permutation& p, const at::Tensor& w1, const at::Tensor& w2,
                          const at::Tensor& w3, bool recompute, const WeightServices* services = nullptr);

}  // namespace troupe::kernels
