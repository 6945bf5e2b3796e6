#include "kernels/moe_ops.h"

#include <torch/torch.h>

#include <limits>

#include "kernels/kernel_tensors.h"
#include "kernels/ops.h"
#include "kernels/weight_copies.h"

namespace troupe::kernels {

namespace {

RouteChoice route_choice_reference(const at::Tensor& logits, const at::Tensor& bias, const RouteShape& s) {
  RouteChoice c;
  // In fp32 (fp64 for an fp64 model), as HF's routers.
  const auto wide = logits.scalar_type() == at::kDouble ? logits : logits.to(at::kFloat);
  c.scores = s.sigmoid ? at::sigmoid(wide) : at::softmax(wide, -1);
  auto choice = (bias.defined() ? c.scores + bias : c.scores).detach();
  if (s.groups > 1) {
    // Only the experts of each token's groups_kept best groups stay eligible (DeepSeek's
    // node-limited routing): a group scores the sum of its best two experts (one in a group of one).
    const auto per_group = s.experts / s.groups;
    const auto grouped = choice.view({s.tokens, s.groups, per_group});
    const auto group_score = std::get<0>(grouped.topk(std::min<int64_t>(2, per_group), -1)).sum(-1);
    const auto best = std::get<1>(group_score.topk(s.groups_kept, -1, true, false));
    const auto keep = at::zeros_like(group_score, at::kBool).scatter_(1, best, true);
    choice = choice.masked_fill(keep.unsqueeze(-1).expand_as(grouped).reshape_as(choice).logical_not(),
                                -std::numeric_limits<double>::infinity());
  }
  c.experts = std::get<1>(choice.topk(s.top_k, -1));
  c.counts = at::bincount(c.experts.reshape({-1}), {}, s.experts);
  return c;
}

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// permute and its backward outside autograd (PermuteFn and grouped_swiglu's backward call them).
at::Tensor permute_rows(const at::Tensor& x, const at::Tensor& positions, const at::Tensor& order, int64_t top_k) {
#ifdef TROUPE_WITH_CUDA
  if (use_kernels(x)) {
    auto in = x.contiguous();
    auto out = at::empty({in.size(0) * top_k, in.size(1)}, in.options());
    moe_permute(kernel_dtype(in), out.data_ptr(), in.data_ptr(), positions.data_ptr<int64_t>(), in.size(0), top_k,
                in.size(1), stream());
    return out;
  }
#endif
  return x.index_select(0, at::floor_divide(order, top_k));
}

at::Tensor add_copies(const at::Tensor& dcopies, const at::Tensor& positions, const at::Tensor& order, int64_t top_k) {
  const auto tokens = dcopies.size(0) / top_k, dim = dcopies.size(1);
#ifdef TROUPE_WITH_CUDA
  if (use_kernels(dcopies)) {
    auto d = dcopies.contiguous();
    auto dx = at::empty({tokens, dim}, d.options());
    moe_permute_backward(kernel_dtype(d), dx.data_ptr(), d.data_ptr(), positions.data_ptr<int64_t>(), tokens, top_k,
                         dim, stream());
    return dx;
  }
#endif
  return at::zeros({tokens, dim}, dcopies.options()).index_add(0, at::floor_divide(order, top_k), dcopies);
}

#ifdef TROUPE_WITH_CUDA

// The kernel chooses; the scores' gradient is softmax's or sigmoid's backward.
struct RouteFn : torch::autograd::Function<RouteFn> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& logits, const at::Tensor& bias,
                               RouteShape shape) {
    auto l = logits.contiguous();
    auto scores = at::empty({shape.tokens, shape.experts}, l.options().dtype(at::kFloat));
    auto experts = at::empty({shape.tokens, shape.top_k}, l.options().dtype(at::kLong));
    auto counts = at::zeros({shape.experts}, l.options().dtype(at::kLong));
    const auto b = bias.to(at::kFloat).contiguous();  // empty: no bias
    moe_route(kernel_dtype(l), l.data_ptr(), b.numel() > 0 ? b.data_ptr<float>() : nullptr, scores.data_ptr<float>(),
              experts.data_ptr<int64_t>(), counts.data_ptr<int64_t>(), shape, stream());
    ctx->save_for_backward({scores});
    ctx->saved_data["sigmoid"] = shape.sigmoid;
    ctx->saved_data["dtype"] = static_cast<int64_t>(logits.scalar_type());
    ctx->mark_non_differentiable({experts, counts});
    return {scores, experts, counts};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables()[0];
    const auto ds = grads[0].defined() ? grads[0].to(at::kFloat) : at::zeros_like(s);
    const auto dlogits = ctx->saved_data["sigmoid"].toBool() ? ds * s * (1 - s) : s * (ds - (ds * s).sum(-1, true));
    return {dlogits.to(static_cast<at::ScalarType>(ctx->saved_data["dtype"].toInt())), at::Tensor(), at::Tensor()};
  }
};

struct PermuteFn : torch::autograd::Function<PermuteFn> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& positions,
                            const at::Tensor& order, int64_t top_k) {
    ctx->save_for_backward({positions, order});
    ctx->saved_data["top_k"] = top_k;
    return permute_rows(x, positions, order, top_k);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    return {add_copies(grads[0], saved[0], saved[1], ctx->saved_data["top_k"].toInt()), at::Tensor(), at::Tensor(),
            at::Tensor()};
  }
};

struct UnpermuteFn : torch::autograd::Function<UnpermuteFn> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& y, const at::Tensor& weights,
                            const at::Tensor& positions) {
    auto in = y.contiguous();
    auto w = weights.to(at::kFloat).contiguous();
    const auto tokens = w.size(0), top_k = w.size(1), dim = in.size(1);
    auto out = at::empty({tokens, dim}, in.options());
    moe_unpermute(kernel_dtype(in), out.data_ptr(), in.data_ptr(), w.data_ptr<float>(), positions.data_ptr<int64_t>(),
                  tokens, top_k, dim, stream());
    ctx->save_for_backward({in, w, positions});
    return out;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &y = saved[0], &w = saved[1], &positions = saved[2];
    auto dout = grads[0].to(y.scalar_type()).contiguous();
    const auto tokens = w.size(0), top_k = w.size(1), dim = y.size(1);
    auto dy = at::empty_like(y);
    auto dw = at::empty_like(w);
    moe_unpermute_backward(kernel_dtype(y), dy.data_ptr(), dw.data_ptr<float>(), dout.data_ptr(), y.data_ptr(),
                           w.data_ptr<float>(), positions.data_ptr<int64_t>(), tokens, top_k, dim, stream());
    return {dy, dw, at::Tensor()};
  }
};

#endif

// y = _grouped_mm(x, w.transpose(1, 2), ends) has dx = _grouped_mm(dy, w, ends) and
// dw[e] = dy_eᵀ x_e = _grouped_mm(dy.t(), x, ends) (the groups along the shared rows).
// The weights are the masters: their compute-dtype copies come from the model's services (kept
// from one optimizer step to the next, as the dense projections' are), and their gradients are
// returned in the masters' dtype.
struct GroupedSwigluFn : torch::autograd::Function<GroupedSwigluFn> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& flat, const at::Tensor& master1,
                            const at::Tensor& master2, const at::Tensor& master3, const at::Tensor& positions,
                            const at::Tensor& order, const at::Tensor& ends, int64_t top_k, bool recompute,
                            int64_t services) {
    const auto* s = reinterpret_cast<const WeightServices*>(services);
    const auto dtype = flat.scalar_type();
    const auto w1 = compute_weight(master1, dtype, s), w2 = compute_weight(master2, dtype, s),
               w3 = compute_weight(master3, dtype, s);
    ctx->saved_data["weight_dtype"] = static_cast<int64_t>(master1.scalar_type());
    const auto x = permute_rows(flat, positions, order, top_k);
    const auto gate = at::_grouped_mm(x, w1.transpose(1, 2), ends);
    const auto up = at::_grouped_mm(x, w3.transpose(1, 2), ends);
    const auto h = swiglu(gate, up);
    auto y = at::_grouped_mm(h, w2.transpose(1, 2), ends);
    ctx->save_for_backward({flat, w1, w2, w3, positions, order, ends, gate, up, recompute ? at::Tensor() : x,
                            recompute ? at::Tensor() : h});
    ctx->saved_data["top_k"] = top_k;
    return y;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();
    const auto &flat = s[0], &w1 = s[1], &w2 = s[2], &w3 = s[3], &positions = s[4], &order = s[5], &ends = s[6];
    const auto &gate = s[7], &up = s[8];
    const auto top_k = ctx->saved_data["top_k"].toInt();
    const auto x = s[9].defined() ? s[9] : permute_rows(flat, positions, order, top_k);
    const auto h = s[10].defined() ? s[10] : swiglu(gate, up);
    const auto dy = grads[0].contiguous();
    const auto dh = at::_grouped_mm(dy, w2, ends);
    const auto dw2 = at::_grouped_mm(dy.t(), h, ends);
    const auto [dgate, dup] = swiglu_backward(dh, gate, up);
    const auto dx = at::_grouped_mm(dgate, w1, ends) + at::_grouped_mm(dup, w3, ends);
    const auto dw1 = at::_grouped_mm(dgate.t(), x, ends), dw3 = at::_grouped_mm(dup.t(), x, ends);
    const auto master = static_cast<at::ScalarType>(ctx->saved_data["weight_dtype"].toInt());
    return {add_copies(dx, positions, order, top_k), dw1.to(master), dw2.to(master), dw3.to(master), {}, {}, {}, {},
            {}, {}};
  }
};

}  // namespace

at::Tensor grouped_swiglu(const at::Tensor& flat, const Permutation& p, const at::Tensor& master1,
                          const at::Tensor& master2, const at::Tensor& master3, bool recompute,
                          const WeightServices* services) {
  if (flat.scalar_type() != at::kDouble) {
    const auto ends = at::cumsum(p.counts, 0).to(at::kInt);
    return GroupedSwigluFn::apply(flat, master1, master2, master3, p.positions, p.order, ends, p.top_k, recompute,
                                  reinterpret_cast<int64_t>(services));
  }
  const auto dtype = flat.scalar_type();
  const auto w1 = master1.to(dtype), w2 = master2.to(dtype), w3 = master3.to(dtype);
  // fp64, which _grouped_mm lacks: expert by expert, through autograd.
  const auto x = permute(flat, p);
  const auto host = p.counts.to(at::kCPU);
  std::vector<at::Tensor> outs;
  int64_t offset = 0;
  for (int64_t e = 0; e < host.numel(); ++e) {
    const auto n = host[e].item<int64_t>();
    if (n == 0) continue;
    const auto rows = x.narrow(0, offset, n);
    outs.push_back(at::mm(swiglu(at::mm(rows, w1[e].t()), at::mm(rows, w3[e].t())), w2[e].t()));
    offset += n;
  }
  // No rows at all (an expert-parallel rank nobody routed to): still an output of `x`, so that the
  // backward reaches the collectives before it on every rank.
  return outs.empty() ? x.mul(0) : at::cat(outs);
}

RouteChoice route_choice(const at::Tensor& logits, const at::Tensor& bias, RouteShape shape) {
  shape.tokens = logits.size(0);
  if (shape.groups < 1 || shape.experts % shape.groups != 0 || shape.groups_kept < 1 || shape.groups_kept > shape.groups)
    throw std::invalid_argument("moe routing: " + std::to_string(shape.experts) + " experts in " +
                                std::to_string(shape.groups) + " groups, keeping " + std::to_string(shape.groups_kept));
#ifdef TROUPE_WITH_CUDA
  if (use_kernels(logits) && shape.experts <= kMaxRoutedExperts && shape.groups <= 32) {
    // An undefined input would break autograd's bookkeeping of a custom function: no bias is an
    // empty one.
    auto out = RouteFn::apply(logits, bias.defined() ? bias : at::empty({0}, logits.options().dtype(at::kFloat)), shape);
    return {out[0], out[1], out[2]};
  }
#endif
  return route_choice_reference(logits, bias, shape);
}

Permutation permutation(const at::Tensor& experts, const at::Tensor& counts) {
  Permutation p;
  p.top_k = experts.size(1);
  const auto choices = experts.reshape({-1});
  p.order = std::get<1>(at::sort(choices, std::optional<bool>(true), 0, false));
  p.positions = at::empty_like(p.order).scatter_(0, p.order, at::arange(p.order.numel(), p.order.options()));
  p.counts = counts;
  return p;
}

at::Tensor permute(const at::Tensor& x, const Permutation& p) {
#ifdef TROUPE_WITH_CUDA
  if (use_kernels(x)) return PermuteFn::apply(x, p.positions, p.order, p.top_k);
#endif
  return permute_rows(x, p.positions, p.order, p.top_k);  // index_select, through autograd
}

at::Tensor unpermute(const at::Tensor& y, const at::Tensor& weights, const Permutation& p) {
#ifdef TROUPE_WITH_CUDA
  if (use_kernels(y)) return UnpermuteFn::apply(y, weights, p.positions);
#endif
  const auto tokens = weights.size(0);
  const auto weighted = y * weights.reshape({-1}).index_select(0, p.order).unsqueeze(1).to(y.scalar_type());
  return at::zeros({tokens, y.size(1)}, y.options()).index_add(0, at::floor_divide(p.order, p.top_k), weighted);
}

}  // namespace troupe::kernels
