#include "kernels/float8_linear.h"

#include <torch/torch.h>

#include <stdexcept>

#ifdef TROUPE_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>

#include "kernels/gradient_sink.h"
#include "kernels/kernel_tensors.h"
#endif

namespace troupe::kernels {

Float8Recipe parse_float8_recipe(const std::string& name) {
  for (auto r : {Float8Recipe::tensorwise, Float8Recipe::rowwise, Float8Recipe::rowwise_with_gw_hp,
                 Float8Recipe::blockwise})
    if (name == float8_recipe_name(r)) return r;
  throw std::invalid_argument("unknown Float8 recipe '" + name +
                              "' (tensorwise | rowwise | rowwise_with_gw_hp | blockwise)");
}

const char* float8_recipe_name(Float8Recipe r) {
  switch (r) {
    case Float8Recipe::tensorwise: return "tensorwise";
    case Float8Recipe::rowwise: return "rowwise";
    case Float8Recipe::rowwise_with_gw_hp: return "rowwise_with_gw_hp";
    case Float8Recipe::blockwise: return "blockwise";
  }
  return "?";
}

Float8Scaling float8_scaling(Float8Recipe r) {
  using G = ScaleGranularity;
  switch (r) {
    case Float8Recipe::tensorwise: return {G::tensor, G::tensor, G::tensor, Fp8Format::e5m2, false, false, true};
    case Float8Recipe::rowwise: return {G::row, G::row, G::row, Fp8Format::e4m3, true, false, true};
    case Float8Recipe::rowwise_with_gw_hp: return {G::row, G::row, G::row, Fp8Format::e4m3, true, true, true};
    case Float8Recipe::blockwise: return {G::tile, G::block, G::tile, Fp8Format::e4m3, false, false, false};
  }
  throw std::logic_error("float8_scaling: unknown recipe");
}

std::string float8_small_kn_reason(int64_t out_features, int64_t in_features) {
  if (out_features % 16 || in_features % 16) return "a dimension is not a multiple of 16";
  if (out_features < 1024 || in_features < 1024) return "a dimension is below 1024";
  return {};
}

std::string float8_device_problem(const std::string& device, Float8Recipe r) {
  if (!device.starts_with("cuda")) return "FP8 needs a GPU with FP8 tensor cores; this job runs on " + device;
#ifdef TROUPE_WITH_CUDA
  const auto index = device.size() > 5 ? std::stoi(device.substr(5)) : 0;
  const auto* props = at::cuda::getDeviceProperties(index);
  const int cc = props->major * 10 + props->minor;
  if (cc < 89)
    return std::string("FP8 needs FP8 tensor cores (compute capability 8.9 or above); ") + props->name + " is " +
           std::to_string(props->major) + "." + std::to_string(props->minor);
  if (r != Float8Recipe::tensorwise && cc != 90)
    return std::string("the ") + float8_recipe_name(r) + " recipe needs cuBLASLt's per-row or block scales, which run on " +
           "Hopper (compute capability 9.0); " + props->name + " is " + std::to_string(props->major) + "." +
           std::to_string(props->minor);
  return {};
#else
  return "this build has no CUDA";
#endif
}

void Float8Linears::add(const at::Tensor& weight) {
  std::lock_guard lock(mutex_);
  weights_[weight.unsafeGetTensorImpl()];
}

bool Float8Linears::has(const at::Tensor& weight) const {
  std::lock_guard lock(mutex_);
  return weights_.contains(weight.unsafeGetTensorImpl());
}

size_t Float8Linears::size() const {
  std::lock_guard lock(mutex_);
  return weights_.size();
}

Float8Linears::Quantized Float8Linears::quantized(const at::Tensor& weight, bool plain, bool transposed) {
  {
    std::lock_guard lock(mutex_);
    const auto it = weights_.find(weight.unsafeGetTensorImpl());
    if (it != weights_.end() && it->second.gathered) {
      if (!it->second.provided)
        throw std::logic_error("an FP8 weight gathered by FSDP as FP8 is used while its unit is not gathered");
      auto& q = it->second.q;
      if (transposed && !q.q_t.defined()) q.q_t = q.q.t().contiguous();
      return q;
    }
  }
  if (weight.scalar_type() != at::kFloat || !weight.is_contiguous()) return quantize_weight(weight, plain, transposed);
  std::lock_guard lock(mutex_);
  auto& kept = weights_[weight.unsafeGetTensorImpl()];
  if (kept.version != weight._version() || !kept.q.q.defined()) {
    kept.q = quantize_weight(weight, true, true);
    kept.version = weight._version();
  }
  return kept.q;
}

void Float8Linears::gather_as_float8(const at::Tensor& weight) {
  if (recipe_ != Float8Recipe::tensorwise) throw std::logic_error("FP8 all-gather gathers tensorwise weights only");
  withdraw(weight);
}

void Float8Linears::provide(const at::Tensor& weight, const at::Tensor& q, const at::Tensor& scale) {
  std::lock_guard lock(mutex_);
  weights_.at(weight.unsafeGetTensorImpl()) = Kept{{q, scale, at::Tensor(), scale}, -1, true, true};
}

void Float8Linears::withdraw(const at::Tensor& weight) {
  std::lock_guard lock(mutex_);
  weights_.at(weight.unsafeGetTensorImpl()) = Kept{{}, -1, true, false};
}

#ifdef TROUPE_WITH_CUDA

namespace {

// `t` [rows, cols] quantized as it is (`plain`) and transposed into [cols, ld_t] (`transposed`).
Float8Linears::Quantized quantize(const at::Tensor& t, ScaleGranularity g, Fp8Format f, bool pow2, bool plain, bool transposed,
                    int64_t ld_t) {
  const auto rows = t.size(0), cols = t.size(1);
  const auto bytes = t.options().dtype(at::kByte);
  const auto floats = t.options().dtype(at::kFloat);
  Float8Linears::Quantized out;
  Fp8QuantizeArgs a{kernel_dtype(t), t.data_ptr(), rows, cols, g, f, pow2};
  if (plain) {
    out.q = at::empty({rows, cols}, bytes);
    out.scale = at::empty({fp8_scale_count(g, rows, cols)}, floats);
    a.out = out.q.data_ptr<uint8_t>();
    a.out_scale = out.scale.data_ptr<float>();
  }
  if (transposed) {
    out.q_t = at::empty({cols, ld_t}, bytes);
    out.scale_t = at::empty({fp8_scale_count(g, cols, ld_t)}, floats);
    a.out_t = out.q_t.data_ptr<uint8_t>();
    a.ld_t = ld_t;
    a.out_t_scale = out.scale_t.data_ptr<float>();
  }
  const auto ws_count = fp8_quantize_workspace(a);
  auto ws = ws_count ? at::empty({ws_count}, floats) : at::Tensor();
  fp8_quantize(a, ws.defined() ? ws.data_ptr<float>() : nullptr, stream());
  return out;
}

Fp8Operand operand(const at::Tensor& q, const at::Tensor& scale, Fp8Format f, ScaleGranularity g) {
  return {q.data_ptr<uint8_t>(), q.size(0), q.size(1), f, g, scale.data_ptr<float>()};
}

// out [a.rows, b.rows] (+)= a · bᵀ, reducing over the operands' whole rows.
void gemm(const Fp8Operand& a, const Fp8Operand& b, const at::Tensor& out, bool accumulate, bool fast_accum) {
  if (a.ld != b.ld) throw std::logic_error("fp8 gemm: operands of different widths");
  fp8_gemm(a, b, a.ld, kernel_dtype(out), out.data_ptr(), out.size(1),
           accumulate, fast_accum, at::cuda::getCurrentCUDABlasLtHandle(), at::cuda::getCUDABlasLtWorkspace(),
           static_cast<int64_t>(at::cuda::getCUDABlasLtWorkspaceSize()), stream());
}

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Saves the input's transpose in FP8 (half of bf16's bytes) for the weight-gradient GEMM, or the
// bf16 input under rowwise_with_gw_hp. The weights' transposed FP8 copies for the input-gradient
// GEMM are asked for again in the backward, not saved: under FSDP a whole weight's copy held from
// every layer's forward to its backward would undo the sharding (a master's copy is kept anyway).
struct Float8LinearGroupFn : torch::autograd::Function<Float8LinearGroupFn> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, at::TensorList weights, int64_t services) {
    const auto* s = reinterpret_cast<const WeightServices*>(services);
    auto* f8 = s->float8;
    const auto sc = float8_scaling(f8->recipe());
    const auto K = x.size(-1);
    auto x2 = x.reshape({-1, K}).contiguous();
    const auto M = x2.size(0), m_pad = round_up(M, 16);
    if (sc.input == ScaleGranularity::tile && M % 4)
      throw std::invalid_argument("blockwise FP8: the tokens of a micro-batch (" + std::to_string(M) +
                                  ") must be a multiple of 4");
    const bool save_t = !sc.weight_grad_high_precision;
    auto qx = quantize(x2, sc.input, Fp8Format::e4m3, sc.pow2, true, save_t, m_pad);
    variable_list outs, to_save;
    std::vector<int64_t> keys;
    for (const auto& weight : weights) {
      auto w = f8->quantized(weight, /*plain=*/true, /*transposed=*/false);
      auto y = at::empty({M, weight.size(0)}, x2.options());
      gemm(operand(qx.q, qx.scale, Fp8Format::e4m3, sc.input), operand(w.q, w.scale, Fp8Format::e4m3, sc.weight), y,
           false, sc.fast_accum_forward);
      auto shape = x.sizes().vec();
      shape.back() = weight.size(0);
      outs.push_back(y.view(shape));
      to_save.push_back(weight);
      keys.push_back(reinterpret_cast<int64_t>(weight.unsafeGetTensorImpl()));
    }
    if (save_t) {
      to_save.push_back(qx.q_t);
      to_save.push_back(qx.scale_t);
    } else {
      to_save.push_back(x2);
    }
    ctx->save_for_backward(to_save);
    ctx->saved_data["services"] = services;
    ctx->saved_data["weight_keys"] = keys;
    ctx->saved_data["weight_dtype"] = static_cast<int64_t>(weights.front().scalar_type());
    ctx->saved_data["x_shape"] = x.sizes().vec();
    return outs;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto* s = reinterpret_cast<const WeightServices*>(ctx->saved_data["services"].toInt());
    const auto sc = float8_scaling(s->float8->recipe());
    const auto saved = ctx->get_saved_variables();
    const auto keys = ctx->saved_data["weight_keys"].toIntVector();
    const auto weight_dtype = static_cast<at::ScalarType>(ctx->saved_data["weight_dtype"].toInt());
    const auto x_shape = ctx->saved_data["x_shape"].toIntVector();
    const size_t n = keys.size();
    const auto K = x_shape.back();
    auto* f8 = s->float8;
    variable_list out(n + 2);
    at::Tensor dx;
    for (size_t i = 0; i < n; ++i) {
      if (!grads[i].defined()) continue;
      auto dy = grads[i].reshape({-1, grads[i].size(-1)}).contiguous();
      const auto M = dy.size(0), N = dy.size(1), m_pad = round_up(M, 16);
      const bool wants_dw = ctx->needs_input_grad(i + 1), fp8_dw = wants_dw && !sc.weight_grad_high_precision;
      auto qdy = quantize(dy, sc.grad, sc.grad_format, sc.pow2, ctx->needs_input_grad(0), fp8_dw, m_pad);
      if (ctx->needs_input_grad(0)) {
        const bool accumulate = dx.defined();
        if (!accumulate) dx = at::empty({M, K}, dy.options());
        const auto w = f8->quantized(saved[i], /*plain=*/false, /*transposed=*/true);
        gemm(operand(qdy.q, qdy.scale, sc.grad_format, sc.grad), operand(w.q_t, w.scale_t, Fp8Format::e4m3, sc.weight),
             dx, accumulate, false);
      }
      if (!wants_dw) continue;
      const void* key = reinterpret_cast<const void*>(keys[i]);
      if (!fp8_dw) {
        const auto& x2 = saved[n];
        if (!sink_product(s, key, dy.t(), x2)) out[i + 1] = at::mm(dy.t(), x2, weight_dtype);
        continue;
      }
      const auto a = operand(qdy.q_t, qdy.scale_t, sc.grad_format, sc.grad);
      const auto b = operand(saved[n], saved[n + 1], Fp8Format::e4m3, sc.input);
      if (sink_write(s, key, [&](const at::Tensor& dest, bool add) { gemm(a, b, dest, add, false); })) continue;
      auto dw = at::empty({N, K}, dy.options().dtype(weight_dtype == at::kFloat ? at::kFloat : dy.scalar_type()));
      gemm(a, b, dw, false, false);
      out[i + 1] = dw.to(weight_dtype);
    }
    if (dx.defined()) out[0] = dx.view(x_shape);
    return out;
  }
};

}  // namespace

Float8Linears::Quantized Float8Linears::quantize_weight(const at::Tensor& weight, bool plain, bool transposed) const {
  const auto sc = float8_scaling(recipe_);
  auto w = weight.detach().contiguous();
  return quantize(w, sc.weight, Fp8Format::e4m3, sc.pow2, plain, transposed, w.size(0));
}

std::vector<at::Tensor> float8_linear_group(const at::Tensor& x, at::TensorList weights, const WeightServices* services) {
  if (!x.is_cuda()) throw std::invalid_argument("FP8 projections run on CUDA only; the input is on " + x.device().str());
  if (x.size(-1) % 16) throw std::invalid_argument("FP8 projection: the input's width must be a multiple of 16");
  return Float8LinearGroupFn::apply(x, weights, reinterpret_cast<int64_t>(services));
}

#else

Float8Linears::Quantized Float8Linears::quantize_weight(const at::Tensor&, bool, bool) const {
  throw std::invalid_argument("FP8 projections need a build with CUDA");
}

std::vector<at::Tensor> float8_linear_group(const at::Tensor&, at::TensorList, const WeightServices*) {
  throw std::invalid_argument("FP8 projections need a build with CUDA");
}

#endif

}  // namespace troupe::kernels
