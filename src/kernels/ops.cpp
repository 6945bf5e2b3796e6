#include "kernels/ops.h"

#include <torch/torch.h>

#include <algorithm>

#ifdef TROUPE_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAFunctions.h>

#include "kernels/cross_entropy.h"
#include "kernels/rmsnorm.h"
#include "kernels/rotary.h"
#include "kernels/swiglu.h"
#endif
#include "kernels/float8_linear.h"
#include "kernels/gradient_sink.h"
#include "kernels/kernel_tensors.h"
#include "kernels/precomputed_gradient.h"
#include "kernels/weight_copies.h"

namespace troupe::kernels {

namespace {

at::Tensor rms_norm_reference(const at::Tensor& x, const at::Tensor& weight, double eps) {
  const auto compute = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto xf = x.to(compute);
  auto normed = xf * at::rsqrt(xf.pow(2).mean(-1, true) + eps);
  return normed.to(x.scalar_type()) * weight.to(x.scalar_type());
}

at::Tensor rotary_reference(const at::Tensor& x, const at::Tensor& cos_table, const at::Tensor& sin_table) {
  const auto B = x.size(0), S = x.size(1), H = x.size(2), D = x.size(3);
  const auto compute = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto pairs = x.to(compute).reshape({B, S, H, D / 2, 2});
  auto x0 = pairs.select(-1, 0), x1 = pairs.select(-1, 1);
  auto cos = cos_table.narrow(0, 0, S).view({1, S, 1, D / 2});
  auto sin = sin_table.narrow(0, 0, S).view({1, S, 1, D / 2});
  return at::stack({x0 * cos - x1 * sin, x0 * sin + x1 * cos}, -1).flatten(3).to(x.scalar_type());
}

at::Tensor linear_cross_entropy_reference(const at::Tensor& hidden, const at::Tensor& weight,
                                          const at::Tensor& targets) {
  auto logits = at::linear(hidden, weight.to(hidden.scalar_type()));
  auto lf = logits.scalar_type() == at::kDouble ? logits : logits.to(at::kFloat);
  return at::cross_entropy_loss(lf.flatten(0, -2), targets.flatten());
}

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The model's services, for the backward's gradient sinks (the pointer outlives the graph: the
// model owns them).
void save_services(AutogradContext* ctx, const WeightServices* services) {
  ctx->saved_data["services"] = reinterpret_cast<int64_t>(services);
}
const WeightServices* saved_services(AutogradContext* ctx) {
  return reinterpret_cast<const WeightServices*>(ctx->saved_data["services"].toInt());
}

#ifdef TROUPE_WITH_CUDA


// RMSNorm on the kernels. With `residual`, normalises h = x + residual and writes h to `sum`.
at::Tensor norm_forward(const at::Tensor& x, const at::Tensor& w, double eps, at::Tensor& rstd,
                        const at::Tensor& residual = {}, const at::Tensor& sum = {}) {
  const auto dim = x.size(-1), rows = x.numel() / dim;
  auto out = at::empty_like(x);
  rstd = at::empty({rows}, x.options().dtype(at::kFloat));
  rmsnorm_forward(kernel_dtype(x), out.data_ptr(), rstd.data_ptr<float>(), x.data_ptr(), w.data_ptr(), rows, dim,
                  static_cast<float>(eps), stream(), residual.defined() ? residual.data_ptr() : nullptr,
                  sum.defined() ? sum.data_ptr() : nullptr);
  return out;
}

// dx of RMSNorm (plus `dresidual` when defined); the weight's gradient in fp32.
std::pair<at::Tensor, at::Tensor> norm_backward(const at::Tensor& dout, const at::Tensor& x, const at::Tensor& w,
                                                const at::Tensor& rstd, const at::Tensor& dresidual = {}) {
  const auto dim = x.size(-1), rows = x.numel() / dim;
  auto d = dout.contiguous();
  auto dres = dresidual.defined() ? dresidual.contiguous() : at::Tensor();
  auto dx = at::empty_like(x);
  auto dweight = at::empty({dim}, x.options().dtype(at::kFloat));
  auto workspace = at::empty({rmsnorm_backward_workspace(rows, dim)}, x.options().dtype(at::kFloat));
  rmsnorm_backward(kernel_dtype(x), dx.data_ptr(), dweight.data_ptr<float>(), d.data_ptr(), x.data_ptr(), w.data_ptr(),
                   rstd.data_ptr<float>(), rows, dim, workspace.data_ptr<float>(), stream(),
                   dres.defined() ? dres.data_ptr() : nullptr);
  return {dx, dweight};
}

// The three norm functions save (input or h, the weight in the compute dtype, rstd) and the
// master weight's dtype and identity, and differentiate through norm_backward.
void save_norm(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& w, const at::Tensor& rstd,
               const at::Tensor& weight, const WeightServices* services) {
  ctx->save_for_backward({input, w, rstd});
  save_services(ctx, services);
  ctx->saved_data["weight_dtype"] = static_cast<int64_t>(weight.scalar_type());
  ctx->saved_data["weight_key"] = reinterpret_cast<int64_t>(weight.unsafeGetTensorImpl());
}

// The weight (the function's input `weight_input`) gets its gradient only from a backward that
// asks for it (a split backward asks once for the input, once for the weights): in fp32 into its
// sink (FSDP's), or from autograd in the master weight's dtype.
std::pair<at::Tensor, at::Tensor> saved_norm_backward(AutogradContext* ctx, size_t weight_input, const at::Tensor& dout,
                                                      const at::Tensor& dresidual = {}) {
  auto saved = ctx->get_saved_variables();
  auto [dx, dweight] = norm_backward(dout, saved[0], saved[1], saved[2], dresidual);
  const auto weight_dtype = static_cast<at::ScalarType>(ctx->saved_data["weight_dtype"].toInt());
  const auto* key = reinterpret_cast<const void*>(ctx->saved_data["weight_key"].toInt());
  if (!ctx->needs_input_grad(weight_input) || sink_gradient(saved_services(ctx), key, dweight)) return {dx, at::Tensor()};
  return {dx, dweight.to(weight_dtype)};
}

struct RmsNormFn : torch::autograd::Function<RmsNormFn> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight, double eps,
                            int64_t services) {
    auto xc = x.contiguous();
    const auto* s = reinterpret_cast<const WeightServices*>(services);
    auto w = compute_weight(weight, x.scalar_type(), s);
    at::Tensor rstd;
    auto out = norm_forward(xc, w, eps, rstd);
    save_norm(ctx, xc, w, rstd, weight, s);
    return out;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto [dx, dweight] = saved_norm_backward(ctx, 1, grads[0]);
    return {dx, dweight, at::Tensor(), at::Tensor()};
  }
};

// The two norms of a pre-norm block with the residual stream passed through them, so that the
// stream's gradient joins the norm's dx inside the backward kernel instead of in separate adds.
//   RmsNormResidualFn(x, w)    -> (x, rmsnorm(x))           x passes through unchanged
//   AddRmsNormFn(x, a, w)      -> (h, rmsnorm(h)), h = x + a, the add fused into the norm
struct RmsNormResidualFn : torch::autograd::Function<RmsNormResidualFn> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight, double eps,
                               int64_t services) {
    auto xc = x.contiguous();
    const auto* s = reinterpret_cast<const WeightServices*>(services);
    auto w = compute_weight(weight, x.scalar_type(), s);
    at::Tensor rstd;
    auto out = norm_forward(xc, w, eps, rstd);
    save_norm(ctx, xc, w, rstd, weight, s);
    return {x, out};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (!grads[1].defined()) return {grads[0], at::Tensor(), at::Tensor(), at::Tensor()};
    auto [dx, dweight] = saved_norm_backward(ctx, 1, grads[1], grads[0]);
    return {dx, dweight, at::Tensor(), at::Tensor()};
  }
};

struct AddRmsNormFn : torch::autograd::Function<AddRmsNormFn> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& a, const at::Tensor& weight,
                               double eps, int64_t services) {
    auto xc = x.contiguous(), ac = a.contiguous();
    const auto* s = reinterpret_cast<const WeightServices*>(services);
    auto w = compute_weight(weight, x.scalar_type(), s);
    auto h = at::empty_like(xc);
    at::Tensor rstd;
    auto out = norm_forward(xc, w, eps, rstd, ac, h);
    save_norm(ctx, h, w, rstd, weight, s);
    return {h, out};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (!grads[1].defined()) return {grads[0], grads[0], at::Tensor(), at::Tensor(), at::Tensor()};
    auto [dh, dweight] = saved_norm_backward(ctx, 2, grads[1], grads[0]);
    return {dh, dh, dweight, at::Tensor(), at::Tensor()};
  }
};

struct RotaryFn : torch::autograd::Function<RotaryFn> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
    auto xc = x.contiguous();
    auto out = at::empty_like(xc);
    rotary_forward(kernel_dtype(xc), out.data_ptr(), xc.data_ptr(), cos.data_ptr<float>(), sin.data_ptr<float>(),
                   x.size(0), x.size(1), x.size(2), x.size(3), stream());
    ctx->save_for_backward({cos, sin});
    return out;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    auto dout = grads[0].contiguous();
    auto dx = at::empty_like(dout);
    rotary_backward(kernel_dtype(dout), dx.data_ptr(), dout.data_ptr(), saved[0].data_ptr<float>(),
                    saved[1].data_ptr<float>(), dout.size(0), dout.size(1), dout.size(2), dout.size(3), stream());
    return {dx, at::Tensor(), at::Tensor()};
  }
};

struct SwigluFn : torch::autograd::Function<SwigluFn> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& gate, const at::Tensor& up) {
    auto g = gate.contiguous(), u = up.contiguous();
    auto out = at::empty_like(g);
    swiglu_forward(kernel_dtype(g), out.data_ptr(), g.data_ptr(), u.data_ptr(), g.numel(), stream());
    ctx->save_for_backward({g, u});
    return out;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    auto dout = grads[0].contiguous();
    auto dgate = at::empty_like(saved[0]), dup = at::empty_like(saved[1]);
    swiglu_backward(kernel_dtype(dout), dgate.data_ptr(), dup.data_ptr(), dout.data_ptr(), saved[0].data_ptr(),
                    saved[1].data_ptr(), dout.numel(), stream());
    return {dgate, dup};
  }
};

// The loss is the graph's last op, so its gradient is known up to the incoming scalar: the
// forward computes d(mean loss)/d(hidden) and /d(weight) chunk by chunk while each chunk of
// logits exists, and the backward only scales them. The mean's divisor (the number of
// counted targets) stays on the device: the kernel reads it there, so the host never waits.
struct LinearCrossEntropyFn : torch::autograd::Function<LinearCrossEntropyFn> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& hidden, const at::Tensor& weight,
                            const at::Tensor& targets, int64_t chunk_rows, int64_t services) {
    const auto dim = hidden.size(-1);
    auto h = hidden.reshape({-1, dim}).contiguous();
    auto t = targets.reshape({-1}).contiguous();
    const auto rows = h.size(0), vocab = weight.size(0);
    auto w = compute_weight(weight, h.scalar_type(), reinterpret_cast<const WeightServices*>(services));
    auto losses = at::empty({rows}, h.options().dtype(at::kFloat));
    auto dh = at::empty_like(h);
    auto dw = at::empty({vocab, dim}, weight.options().dtype(at::kFloat));
    const auto inv_count = (t >= 0).sum().clamp_min(1).to(at::kFloat).reciprocal();
    for (int64_t r0 = 0; r0 < rows; r0 += chunk_rows) {
      const auto n = std::min(chunk_rows, rows - r0);
      auto hc = h.narrow(0, r0, n);
      auto logits = at::mm(hc, w.t());  // [n, vocab] in the compute dtype; becomes its own gradient
      cross_entropy_forward_backward(kernel_dtype(logits), logits.data_ptr(), losses.narrow(0, r0, n).data_ptr<float>(),
                                     t.narrow(0, r0, n).data_ptr<int64_t>(), n, vocab, 1.f, stream(),
                                     inv_count.data_ptr<float>());
      auto dh_chunk = dh.narrow(0, r0, n);
      at::mm_out(dh_chunk, logits, w);
      // fp32 accumulation across chunks; the first chunk writes dw without reading it.
      product_into(dw, logits.t(), hc, r0 > 0);
    }
    ctx->save_for_backward({dh.view(hidden.sizes()), dw});
    ctx->saved_data["services"] = services;
    ctx->saved_data["weight_dtype"] = static_cast<int64_t>(weight.scalar_type());
    ctx->saved_data["weight_key"] = reinterpret_cast<int64_t>(weight.unsafeGetTensorImpl());
    return losses.sum() * inv_count;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    // The gradients were computed in the forward for an incoming gradient of 1, and are scaled in
    // place (nothing else holds them) only when it is not 1, each by the backward that asks for
    // it: a split backward (the zero-bubble schedules) runs this node once for the input and
    // again for the weight, and must not scale a gradient twice.
    auto saved = ctx->get_saved_variables();
    auto dh = saved[0], dw = saved[1];
    variable_list out(5);
    if (ctx->needs_input_grad(0)) out[0] = scale_precomputed(dh, grads[0]);
    if (ctx->needs_input_grad(1)) {
      scale_precomputed(dw, grads[0]);
      // dw is fp32: a sink (FSDP's, fp32) takes it as it is, not rounded to a bf16 weight's dtype.
      const auto weight_dtype = static_cast<at::ScalarType>(ctx->saved_data["weight_dtype"].toInt());
      if (!sink_gradient(saved_services(ctx), reinterpret_cast<const void*>(ctx->saved_data["weight_key"].toInt()), dw))
        out[1] = dw.to(weight_dtype);
    }
    return out;
  }
};

#endif  // TROUPE_WITH_CUDA

// A projection's input from its recipe, computed as the forward computed it (the same kernel on
// CUDA, the same composition elsewhere), so the backward sees the forward's values.
at::Tensor recompute_input(const InputRecipe& r) {
  if (r.op == InputRecipe::Op::rms_norm) {
#ifdef TROUPE_WITH_CUDA
    if (use_kernels(r.a)) {
      at::Tensor rstd;
      return norm_forward(r.a.contiguous(), r.b, r.eps, rstd);
    }
#endif
    return rms_norm_reference(r.a, r.b, r.eps);
  }
#ifdef TROUPE_WITH_CUDA
  if (use_kernels(r.a)) {
    auto g = r.a.contiguous(), u = r.b.contiguous();
    auto out = at::empty_like(g);
    swiglu_forward(kernel_dtype(g), out.data_ptr(), g.data_ptr(), u.data_ptr(), g.numel(), stream());
    return out;
  }
#endif
  return at::silu(r.a) * r.b;
}

// Mixed-precision projections of one input: the fp32 master weights are cast to the
// activations' dtype for the GEMMs (or their kept copies taken, see kernels/weight_copies.h),
// and each weight gradient comes out of its GEMM in fp32 (fp32 accumulation written as fp32)
// instead of being rounded to bf16 and cast back, which saves a pass over every weight gradient
// per step. The input's gradient from all the projections is accumulated by the GEMMs
// themselves (beta = 1), not by separate adds. With a recipe the input is not kept but
// recomputed in the backward; that path also runs on the CPU.
struct LinearGroupFn : torch::autograd::Function<LinearGroupFn> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, at::TensorList weights,
                               const InputRecipe& recipe, int64_t services) {
    const auto* s = reinterpret_cast<const WeightServices*>(services);
    save_services(ctx, s);
    variable_list to_save, outs;
    if (recipe.op == InputRecipe::Op::none) to_save.push_back(x);
    for (const auto& weight : weights) {
      auto w = compute_weight(weight, x.scalar_type(), s);
      outs.push_back(at::linear(x, w));
      to_save.push_back(std::move(w));
    }
    ctx->save_for_backward(to_save);
    ctx->saved_data["weight_dtype"] = static_cast<int64_t>(weights.front().scalar_type());
    // The weights' identities, for their gradient sinks (kernels/gradient_sink.h).
    std::vector<int64_t> keys;
    for (const auto& weight : weights) keys.push_back(reinterpret_cast<int64_t>(weight.unsafeGetTensorImpl()));
    ctx->saved_data["weight_keys"] = keys;
    keep_recipe(ctx, recipe, x.scalar_type(), s);
    return outs;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    auto x = recompute_kept_input(ctx);
    const bool recomputed = x.defined();
    if (!recomputed) x = saved[0];
    const size_t first_weight = recomputed ? 0 : 1;
    const auto weight_dtype = static_cast<at::ScalarType>(ctx->saved_data["weight_dtype"].toInt());
    const auto keys = ctx->saved_data["weight_keys"].toIntVector();
    const auto x2 = x.reshape({-1, x.size(-1)});
    variable_list out(grads.size() + 3);  // x, the weights, and nothing for the recipe and the services
    at::Tensor dx;  // [rows, in]
    for (size_t i = 0; i < grads.size(); ++i) {
      if (!grads[i].defined()) continue;
      const auto& w = saved[i + first_weight];
      const auto dy = grads[i].reshape({-1, grads[i].size(-1)});
      if (ctx->needs_input_grad(0)) {
        if (dx.defined()) dx.addmm_(dy, w);
        else dx = at::mm(dy, w);
      }
      if (ctx->needs_input_grad(i + 1) &&
          !sink_product(saved_services(ctx), reinterpret_cast<const void*>(keys[i]), dy.t(), x2))
        out[i + 1] = x2.is_cuda() ? at::mm(dy.t(), x2, weight_dtype) : at::mm(dy.t(), x2).to(weight_dtype);
    }
    if (dx.defined()) out[0] = dx.view(x.sizes());
    return out;
  }
};

int64_t as_int(const WeightServices* services) { return reinterpret_cast<int64_t>(services); }

}  // namespace

void keep_recipe(AutogradContext* ctx, const InputRecipe& recipe, at::ScalarType dtype, const WeightServices* s) {
  if (recipe.op == InputRecipe::Op::none) return;
  // Detached: the recipe's tensors are kept by the ops that made them; holding their autograd
  // history here would only lengthen its life.
  ctx->saved_data["recipe_op"] = static_cast<int64_t>(recipe.op);
  ctx->saved_data["recipe_a"] = recipe.a.detach();
  ctx->saved_data["recipe_b"] =
      recipe.op == InputRecipe::Op::rms_norm ? compute_weight(recipe.b, dtype, s).detach() : recipe.b.detach();
  ctx->saved_data["recipe_eps"] = recipe.eps;
}

at::Tensor recompute_kept_input(AutogradContext* ctx) {
  if (ctx->saved_data.find("recipe_op") == ctx->saved_data.end()) return {};
  InputRecipe r;
  r.op = static_cast<InputRecipe::Op>(ctx->saved_data["recipe_op"].toInt());
  r.a = ctx->saved_data["recipe_a"].toTensor();
  r.b = ctx->saved_data["recipe_b"].toTensor();
  r.eps = ctx->saved_data["recipe_eps"].toDouble();
  return recompute_input(r);
}

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps, const WeightServices* services) {
#ifdef TROUPE_WITH_CUDA
  if (use_kernels(x)) return RmsNormFn::apply(x, weight, eps, as_int(services));
#endif
  return rms_norm_reference(x, weight, eps);
}

std::pair<at::Tensor, at::Tensor> rms_norm_residual(const at::Tensor& x, const at::Tensor& weight, double eps,
                                                    const WeightServices* services) {
#ifdef TROUPE_WITH_CUDA
  if (use_kernels(x)) {
    auto out = RmsNormResidualFn::apply(x, weight, eps, as_int(services));
    return {out[0], out[1]};
  }
#endif
  return {x, rms_norm_reference(x, weight, eps)};
}

std::pair<at::Tensor, at::Tensor> add_rms_norm(const at::Tensor& x, const at::Tensor& a, const at::Tensor& weight,
                                               double eps, const WeightServices* services) {
#ifdef TROUPE_WITH_CUDA
  if (use_kernels(x) && a.scalar_type() == x.scalar_type() && a.sizes() == x.sizes()) {
    auto out = AddRmsNormFn::apply(x, a, weight, eps, as_int(services));
    return {out[0], out[1]};
  }
#endif
  auto h = x + a;
  return {h, rms_norm_reference(h, weight, eps)};
}

at::Tensor rotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
#ifdef TROUPE_WITH_CUDA
  TORCH_CHECK(cos.device() == x.device() && sin.device() == x.device(), "rotary: tables on ", cos.device(),
              ", activations on ", x.device());
  if (use_kernels(x) && cos.scalar_type() == at::kFloat) {
    const auto S = x.size(1);
    return RotaryFn::apply(x, cos.narrow(0, 0, S).contiguous(), sin.narrow(0, 0, S).contiguous());
  }
#endif
  return rotary_reference(x, cos, sin);
}

at::Tensor swiglu(const at::Tensor& gate, const at::Tensor& up) {
#ifdef TROUPE_WITH_CUDA
  if (use_kernels(gate)) return SwigluFn::apply(gate, up);
#endif
  return at::silu(gate) * up;
}

InputRecipe InputRecipe::rms_norm(const at::Tensor& input, const at::Tensor& weight, double eps) {
  return {Op::rms_norm, input, weight, eps};
}
std::pair<at::Tensor, at::Tensor> swiglu_backward(const at::Tensor& dout, const at::Tensor& gate, const at::Tensor& up) {
#ifdef TROUPE_WITH_CUDA
  if (use_kernels(gate)) {
    auto d = dout.contiguous(), g = gate.contiguous(), u = up.contiguous();
    auto dgate = at::empty_like(g), dup = at::empty_like(u);
    swiglu_backward(kernel_dtype(d), dgate.data_ptr(), dup.data_ptr(), d.data_ptr(), g.data_ptr(), u.data_ptr(),
                    d.numel(), stream());
    return {dgate, dup};
  }
#endif
  // d silu(g)/dg = s (1 + g (1 - s)), s = sigmoid(g)
  const auto sig = at::sigmoid(gate);
  return {dout * up * sig * (1 + gate * (1 - sig)), dout * gate * sig};
}

InputRecipe InputRecipe::swiglu(const at::Tensor& gate, const at::Tensor& up) { return {Op::swiglu, gate, up, 0}; }

std::vector<at::Tensor> linear_group(const at::Tensor& x, at::TensorList weights, const InputRecipe& recipe,
                                     const WeightServices* services) {
  // FP8 projections (kernels/float8_linear.h) keep their input's transpose in FP8, smaller than
  // the bf16 input a recipe would spare. A group with some FP8 weights is split in two.
  if (services && services->float8) {
    std::vector<at::Tensor> fp8, plain;
    std::vector<bool> is_fp8;
    for (const auto& w : weights) {
      is_fp8.push_back(services->float8->has(w));
      (is_fp8.back() ? fp8 : plain).push_back(w);
    }
    if (!fp8.empty()) {
      auto fp8_out = float8_linear_group(x, fp8, services);
      if (plain.empty()) return fp8_out;
      auto plain_out = linear_group(x, plain, recipe, services);
      std::vector<at::Tensor> out;
      size_t f = 0, p = 0;
      for (bool b : is_fp8) out.push_back(b ? fp8_out[f++] : plain_out[p++]);
      return out;
    }
  }
  // Weights in fp32 (masters) or already in x's dtype (gathered FSDP shards), all alike: the
  // backward gives every weight gradient the first weight's dtype.
  const auto wdtype = weights.empty() ? at::kFloat : weights.front().scalar_type();
  const bool alike = !weights.empty() && std::all_of(weights.begin(), weights.end(), [&](const auto& w) {
    return w.scalar_type() == wdtype;
  });
  if (recipe.op != InputRecipe::Op::none && alike) return LinearGroupFn::apply(x, weights, recipe, as_int(services));
#ifdef TROUPE_WITH_CUDA
  if (use_kernels(x) && alike && (wdtype == at::kFloat || wdtype == x.scalar_type()))
    return LinearGroupFn::apply(x, weights, InputRecipe{}, as_int(services));
#endif
  // Weights with gradient sinks (FSDP's) need its backward elsewhere too.
  const bool sunk = services && services->sinks &&
                    std::any_of(weights.begin(), weights.end(), [&](const auto& w) { return services->sinks->has(w); });
  if (alike && sunk) return LinearGroupFn::apply(x, weights, InputRecipe{}, as_int(services));
  std::vector<at::Tensor> out;
  for (const auto& w : weights) out.push_back(at::linear(x, w.to(x.scalar_type())));
  return out;
}

at::Tensor linear(const at::Tensor& x, const at::Tensor& weight, const InputRecipe& recipe,
                  const WeightServices* services) {
  return linear_group(x, {weight}, recipe, services).front();
}

at::Tensor linear_cross_entropy(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& targets,
                                const WeightServices* services, int64_t chunk_rows) {
#ifdef TROUPE_WITH_CUDA
  if (use_kernels(hidden)) return LinearCrossEntropyFn::apply(hidden, weight, targets, chunk_rows, as_int(services));
#endif
  return linear_cross_entropy_reference(hidden, weight, targets);
}

std::string prefer_cudnn_attention(at::Device device) {
  using B = at::SDPBackend;
  auto& context = at::globalContext();
  // libtorch's order as it stands, with cuDNN moved to the front; restored if cuDNN fails.
  std::vector<int64_t> previous, order{static_cast<int64_t>(B::cudnn_attention)};
  for (auto b : context.sDPPriorityOrder()) {
    previous.push_back(static_cast<int64_t>(b));
    if (b != B::cudnn_attention) order.push_back(static_cast<int64_t>(b));
  }
  context.setSDPPriorityOrder(order);
  context.setSDPUseCuDNN(true);
  try {
    // Deterministic inputs: the check must not draw from the device's random generator.
    const auto opts = at::TensorOptions().dtype(at::kBFloat16).device(device);
    auto q = at::linspace(-1, 1, 2 * 128 * 64, opts).view({1, 2, 128, 64}).requires_grad_(true);
    auto kv = at::linspace(1, -1, 128 * 64, opts).view({1, 1, 128, 64}).requires_grad_(true);
    auto out = at::scaled_dot_product_attention(q, kv, kv, std::nullopt, 0.0, /*is_causal=*/true, std::nullopt,
                                                /*enable_gqa=*/true);
    out.sum().backward();
#ifdef TROUPE_WITH_CUDA
    c10::cuda::device_synchronize();  // an asynchronous failure surfaces here, not mid-training
#endif
    return "";
  } catch (const std::exception& e) {
    context.setSDPPriorityOrder(previous);
    context.setSDPUseCuDNN(false);  // it does not start here
    return e.what();
  }
}

}  // namespace troupe::kernels
