// The kernels as differentiable tensor ops. On CUDA tensors (in a build with CUDA) they run the
// hand-written kernels of this folder; elsewhere the same maths as ATen compositions, which the
// Hugging Face oracle test checks on the CPU.
#pragma once
#include <ATen/core/Tensor.h>

#include <string>
#include <utility>
#include <vector>

#include "kernels/weight_services.h"

namespace torch::autograd {
struct AutogradContext;
}

namespace troupe::kernels {

// The ops of parameters take the model's WeightServices (kernels/weight_services.h): the kept
// compute copies of the masters, and FSDP's gradient sinks. Null: plain casts and autograd.

// Normalises in fp32, returns x's dtype; weight is cast to x's dtype first.
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps, const WeightServices* services = nullptr);

// A pre-norm block's norms with the residual stream threaded through, so that on CUDA the
// stream's gradient is added inside the norm's backward kernel (no separate adds):
//   rms_norm_residual(x, w)  -> {x, rms_norm(x, w)}
//   add_rms_norm(x, a, w)    -> {h, rms_norm(h, w)} with h = x + a (the add fused in the forward)
std::pair<at::Tensor, at::Tensor> rms_norm_residual(const at::Tensor& x, const at::Tensor& weight, double eps,
                                                    const WeightServices* services = nullptr);
std::pair<at::Tensor, at::Tensor> add_rms_norm(const at::Tensor& x, const at::Tensor& a, const at::Tensor& weight,
                                               double eps, const WeightServices* services = nullptr);

// x: [batch, seq, heads, head_dim]; cos/sin: [>= seq, head_dim/2] fp32 (or fp64 for fp64 x).
at::Tensor rotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

at::Tensor swiglu(const at::Tensor& gate, const at::Tensor& up);
// SwiGLU's backward outside autograd (for ops that recompute it): {d gate, d up}.
std::pair<at::Tensor, at::Tensor> swiglu_backward(const at::Tensor& dout, const at::Tensor& gate, const at::Tensor& up);

// What a projection keeps for its backward under activation checkpointing's "op" policy (keep
// the matmul and attention outputs, recompute the element-wise ops): instead of its input x,
// the tensors that x is recomputed from in the backward. Other ops keep those anyway (a norm its
// input, SwiGLU its gate and up), so x is freed after the forward.
struct InputRecipe {
  enum class Op { none, rms_norm, swiglu };
  Op op = Op::none;
  at::Tensor a, b;  // rms_norm: the norm's input and weight; swiglu: gate and up
  double eps = 0;

  // x = rms_norm(input, weight, eps), exactly as rms_norm, rms_norm_residual or add_rms_norm
  // (given h) computed it.
  static InputRecipe rms_norm(const at::Tensor& input, const at::Tensor& weight, double eps);
  // x = swiglu(gate, up).
  static InputRecipe swiglu(const at::Tensor& gate, const at::Tensor& up);
};

// An autograd function that takes a recipe keeps it in `ctx` instead of x (a norm's weight cast
// to `dtype`, as the forward used it; nothing kept for none), and recomputes x from it in the
// backward, as the forward computed it; undefined where no recipe was kept.
void keep_recipe(torch::autograd::AutogradContext* ctx, const InputRecipe& recipe, at::ScalarType dtype,
                 const WeightServices* services);
at::Tensor recompute_kept_input(torch::autograd::AutogradContext* ctx);

// x · weightᵀ with weight cast to x's dtype. On CUDA, each weight gradient is produced in the
// weight's dtype by its GEMM (fp32 masters: no bf16 rounding and cast back).
at::Tensor linear(const at::Tensor& x, const at::Tensor& weight, const InputRecipe& recipe = {},
                  const WeightServices* services = nullptr);
// The projections of one input (q/k/v, gate/up): one output per weight; on CUDA, x's gradient
// is accumulated by the backward GEMMs rather than by adds. With a recipe, x is recomputed for
// the backward instead of kept (on every device).
std::vector<at::Tensor> linear_group(const at::Tensor& x, at::TensorList weights, const InputRecipe& recipe = {},
                                     const WeightServices* services = nullptr);

// Mean cross-entropy of (hidden · weightᵀ) against targets. On CUDA the logits are formed
// `chunk_rows` rows at a time and their gradient is computed with the loss, so the full
// [tokens, vocab] fp32 logits never exist; `weight` may be the fp32 master (cast per chunk).
at::Tensor linear_cross_entropy(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& targets,
                                const WeightServices* services = nullptr, int64_t chunk_rows = 4096);

// Makes scaled_dot_product_attention on CUDA try cuDNN's fused attention first, then flash,
// memory-efficient and math (libtorch tries flash first and cuDNN last). On Hopper cuDNN's
// kernels are faster: 11.1 + 37.0 ms against flash's 16.8 + 54.6 ms per step of the 1.50B model
// (docs/perf/2026-11-25-gpu-1.5B-vs-pytorch-run3.md). Shapes cuDNN declines fall through to flash.
// Process-wide, as libtorch's choice is. A small attention forward and backward on `device`
// checks that cuDNN starts (it does not with a CUDA runtime older than its own loaded first);
// if it fails, the previous order is restored, cuDNN switched off and the error returned
// (empty: cuDNN first).
std::string prefer_cudnn_attention(at::Device device);

}  // namespace troupe::kernels
