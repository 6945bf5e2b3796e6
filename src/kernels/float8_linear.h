// Float8 training of projections (torchtitan's `quantize.linear.float8`): which weights compute
// in FP8 under which recipe, their quantized copies, and the FP8 projection op. The forward GEMM
// and both backward GEMMs run in FP8 with scales computed on the GPU from the tensors of that
// step; masters, optimizer state and gradients stay fp32, activations bf16.
//
// Recipes (operand granularities, kernels/float8.h):
//   tensorwise          inputs, weights, gradients: one scale each; gradients e5m2
//   rowwise             a scale per row (per column for the transposed operands), powers of 2
//   rowwise_with_gw_hp  rowwise, with the weight-gradient GEMM in bf16 (inputs kept in bf16)
//   blockwise           DeepSeek-V3's: 1x128 tiles for inputs and gradients, 128x128 weight blocks
// All but tensorwise keep gradients in e4m3.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "kernels/float8.h"
#include "kernels/ops.h"

namespace troupe::kernels {

enum class Float8Recipe { tensorwise, rowwise, rowwise_with_gw_hp, blockwise };

// The recipe named `name`; throws std::invalid_argument naming the choices.
Float8Recipe parse_float8_recipe(const std::string& name);
const char* float8_recipe_name(Float8Recipe r);

struct Float8Scaling {
  ScaleGranularity input, weight, grad;
  Fp8Format grad_format;
  bool pow2;                       // scales rounded up to powers of two
  bool weight_grad_high_precision;  // the weight-gradient GEMM in bf16
  bool fast_accum_forward;          // cuBLASLt's fast accumulation for the output GEMM
};
Float8Scaling float8_scaling(Float8Recipe r);

// Why a [out, in] projection stays in bf16 under `auto_filter_small_kn`, or empty: FP8 GEMMs need
// both dimensions to be multiples of 16, and below 1024 in either the two quantize passes over the
// input and gradient cost more than the faster GEMM saves.
std::string float8_small_kn_reason(int64_t out_features, int64_t in_features);
// Why FP8 cannot run on the device `device` ("cpu", "cuda:0"), or empty: it needs a GPU with FP8
// tensor cores, and the blockwise and rowwise scale modes of cuBLASLt need Hopper (sm 9.0).
std::string float8_device_problem(const std::string& device, Float8Recipe r);

// One model's FP8 projections, handed to their ops through WeightServices. Weights are matched by
// identity. The quantized copy of a weight (both layouts with their scales) is made once per
// version of the weight (ATen's count of in-place writes: the optimizer's step makes a new one),
// so each weight is quantized once per step however many micro-batches and recomputes use it.
class Float8Linears {
 public:
  explicit Float8Linears(Float8Recipe recipe) : recipe_(recipe) {}
  Float8Recipe recipe() const { return recipe_; }
  void add(const at::Tensor& weight);
  bool has(const at::Tensor& weight) const;
  size_t size() const;

  struct Quantized {
    at::Tensor q, scale;      // [out, in] and its scales (the forward's operand)
    at::Tensor q_t, scale_t;  // [in, out] (the input-gradient GEMM's operand)
  };
  // The weight's quantized copy, the layouts asked for (`plain`: q, `transposed`: q_t): the one
  // provided by FSDP's FP8 all-gather, else the kept one when the weight is a master not written
  // since, else a fresh one (kept, both layouts, when the weight is an fp32 master).
  Quantized quantized(const at::Tensor& weight, bool plain = true, bool transposed = true);

  // FSDP's FP8 all-gather (tensorwise): the weight's gathered e4m3 bytes `q` [out, in] and their
  // one dequantization scale stand for the weight until withdrawn (its gathered buffer is freed);
  // the transpose is made from them when a backward asks.
  // From gather_as_float8 on, the weight has no values of its own: it is used only while
  // provided (quantized() throws otherwise).
  void gather_as_float8(const at::Tensor& weight);
  void provide(const at::Tensor& weight, const at::Tensor& q, const at::Tensor& scale);
  void withdraw(const at::Tensor& weight);

 private:
  struct Kept {
    Quantized q;
    int64_t version = -1;
    bool gathered = false, provided = false;
  };
  Quantized quantize_weight(const at::Tensor& weight, bool plain, bool transposed) const;
  Float8Recipe recipe_;
  mutable std::mutex mutex_;
  std::unordered_map<const void*, Kept> weights_;
};

// x · wᵀ for each weight in FP8: the projections of one input (services->float8 names every
// weight). CUDA only; x in bf16.
std::vector<at::Tensor> float8_linear_group(const at::Tensor& x, at::TensorList weights, const WeightServices* services);

}  // namespace troupe::kernels
