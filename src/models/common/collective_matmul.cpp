// Asynchronous tensor parallelism (models/rank_group.h): the sequence-parallel boundaries fused
// with the projections beside them, part by part around the ring. Rank r holds part r of the
// sequence ([B, s, ...], positions r*s .. r*s+s-1 of the gathered [B, n*s, ...]).
#include <torch/torch.h>

#include "kernels/gradient_sink.h"
#include "kernels/ops.h"
#include "kernels/precomputed_gradient.h"
#include "kernels/weight_copies.h"
#include "models/rank_group.h"

namespace troupe::models {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

RankGroup& group_at(int64_t address) { return *reinterpret_cast<RankGroup*>(address); }
const kernels::WeightServices* services_at(int64_t address) {
  return reinterpret_cast<const kernels::WeightServices*>(address);
}

// Part `c` of a gathered [B, n*s, ...] tensor.
at::Tensor part(const at::Tensor& t, int64_t c, int64_t s) { return t.narrow(1, c * s, s); }

// One pass around the ring, with either or both of two traffics (each rank issues its shifts in
// the same order, so they pair up):
// - `use` (with `x`): every rank's `x` in turn (this rank's first, then the previous rank's, ...),
//   each handed to `use(c, part)` while the next one travels;
// - `partial`: the sum over the ranks of each rank's `partial(c)` for part c, returned on rank c.
//   The sums travel the ring (part c's starts on rank c+1 and ends on rank c), and each rank
//   computes its next partial while the previous sum is on its way.
at::Tensor ring_pass(RankGroup& group, const at::Tensor& x, const std::function<void(int64_t, const at::Tensor&)>& use,
                     const std::function<at::Tensor(int64_t)>& partial) {
  const int n = group.size(), r = group.rank();
  auto block = use ? x.contiguous() : at::Tensor();
  at::Tensor sum;
  std::unique_ptr<RankGroup::Transfer> moving;
  for (int t = 0; t < n; ++t) {
    auto next = use && t + 1 < n ? group.ring_shift(block) : nullptr;
    if (use) use((r - t + n) % n, block);
    if (partial) {
      auto mine = partial(((r - t - 1) % n + n) % n);
      sum = moving ? moving->wait() + mine : mine;
      moving = t + 1 < n ? group.ring_shift(sum) : nullptr;
    }
    if (next) block = next->wait();
  }
  return sum;
}

at::Tensor ring_reduce_scatter(RankGroup& group, const std::function<at::Tensor(int64_t)>& partial) {
  return ring_pass(group, {}, {}, partial);
}

void ring_all_gather(RankGroup& group, const at::Tensor& x, const std::function<void(int64_t, const at::Tensor&)>& use) {
  ring_pass(group, x, use, {});
}

// A weight's gradient: into its sink (added per part), or returned through autograd.
void add_weight_gradient(at::Tensor& out, const kernels::WeightServices* s, int64_t key, const at::Tensor& dy,
                         const at::Tensor& x) {
  const auto dy2 = dy.reshape({-1, dy.size(-1)}), x2 = x.reshape({-1, x.size(-1)});
  if (kernels::sink_product(s, reinterpret_cast<const void*>(key), dy2.t(), x2)) return;
  const bool add = out.defined();
  if (!add)  // summed over parts in fp32 at least
    out = at::empty({dy2.size(-1), x2.size(-1)}, x2.options().dtype(x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat));
  kernels::product_into(out, dy2.t(), x2, add);
}

// The projection's input: recomputed from its kept recipe, or the first saved tensor (taken
// out of `saved`, which then holds what followed it).
at::Tensor kept_input(AutogradContext* ctx, variable_list& saved) {
  auto x = kernels::recompute_kept_input(ctx);
  if (x.defined()) return x;
  x = saved.front();
  saved.erase(saved.begin());
  return x;
}

struct GatheredLinear : torch::autograd::Function<GatheredLinear> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, at::TensorList weights, int64_t group_address,
                               int64_t services_address, bool ring, const kernels::InputRecipe& recipe) {
    auto& group = group_at(group_address);
    const auto* s = services_at(services_address);
    const int64_t n = group.size(), seq = x.size(1);
    std::vector<at::Tensor> ws, outs;
    for (const auto& w : weights) ws.push_back(kernels::compute_weight(w, x.scalar_type(), s));
    if (ring) {
      for (const auto& w : ws) {
        auto shape = x.sizes().vec();
        shape[1] = n * seq;
        shape.back() = w.size(0);
        outs.push_back(at::empty(shape, x.options()));
      }
      ring_all_gather(group, x, [&](int64_t c, const at::Tensor& block) {
        for (size_t i = 0; i < ws.size(); ++i) part(outs[i], c, seq).copy_(at::linear(block, ws[i]));
      });
    } else {
      const auto whole = group.all_gather_sequence(x);
      for (const auto& w : ws) outs.push_back(at::linear(whole, w));
    }
    // This rank's part of the input, not the gathered sequence: the backward gathers it again
    // for the weights' gradients (as Megatron's sequence parallelism does), so a block keeps 1/n
    // of the input it projects; with a recipe (the op policy) not even that: it is recomputed.
    variable_list saved;
    if (recipe.op == kernels::InputRecipe::Op::none) saved.push_back(x);
    saved.insert(saved.end(), ws.begin(), ws.end());
    ctx->save_for_backward(saved);
    kernels::keep_recipe(ctx, recipe, x.scalar_type(), s);
    std::vector<int64_t> keys, dtypes;
    for (const auto& w : weights) {
      keys.push_back(reinterpret_cast<int64_t>(w.unsafeGetTensorImpl()));
      dtypes.push_back(static_cast<int64_t>(w.scalar_type()));
    }
    ctx->saved_data["keys"] = keys;
    ctx->saved_data["dtypes"] = dtypes;
    ctx->saved_data["group"] = group_address;
    ctx->saved_data["services"] = services_address;
    ctx->saved_data["ring"] = ring;
    return outs;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const auto x = kept_input(ctx, saved);
    auto& group = group_at(ctx->saved_data["group"].toInt());
    const auto* s = services_at(ctx->saved_data["services"].toInt());
    const auto keys = ctx->saved_data["keys"].toIntVector(), dtypes = ctx->saved_data["dtypes"].toIntVector();
    const int64_t seq = x.size(1);
    const bool ring = ctx->saved_data["ring"].toBool();
    variable_list out(grads.size() + 5);
    auto wants_dw = [&](size_t i) { return grads[i].defined() && ctx->needs_input_grad(i + 1); };
    bool any_dw = false;
    for (size_t i = 0; i < grads.size(); ++i) any_dw = any_dw || wants_dw(i);
    // The input's gradient over `rows` of the sequence ([B, rows, D]), each projection's product
    // added by the GEMM itself.
    auto input_gradient = [&](int64_t first, int64_t rows) {
      auto shape = x.sizes().vec();
      shape[1] = rows;
      at::Tensor dx;
      for (size_t i = 0; i < grads.size(); ++i) {
        if (!grads[i].defined()) continue;
        const auto g = grads[i].narrow(1, first, rows);
        const auto g2 = g.reshape({-1, g.size(-1)});
        if (!dx.defined()) dx = at::mm(g2, saved[i]);
        else dx.addmm_(g2, saved[i]);
      }
      return dx.defined() ? dx.view(shape) : at::zeros(shape, x.options());
    };
    auto weight_gradients = [&](int64_t c, const at::Tensor& block) {
      for (size_t i = 0; i < grads.size(); ++i)
        if (wants_dw(i)) add_weight_gradient(out[i + 1], s, keys[i], c < 0 ? grads[i] : part(grads[i], c, seq), block);
    };
    const bool dx = ctx->needs_input_grad(0);
    if (ring) {
      // One pass: the input's parts come around again for the weights' gradients while the input
      // gradient's partial sums travel to their owners.
      std::function<void(int64_t, const at::Tensor&)> use;
      std::function<at::Tensor(int64_t)> partial;
      if (any_dw) use = weight_gradients;
      if (dx) partial = [&](int64_t c) { return input_gradient(c * seq, seq); };
      auto sum = ring_pass(group, x, use, partial);
      if (dx) out[0] = sum;
    } else {
      // The input gathered again at once for the weights' gradients (c < 0: the whole sequence).
      if (any_dw) weight_gradients(-1, group.all_gather_sequence(x));
      if (dx) out[0] = group.reduce_scatter_sequence(input_gradient(0, group.size() * seq));
    }
    for (size_t i = 0; i < grads.size(); ++i)
      if (out[i + 1].defined()) out[i + 1] = out[i + 1].to(static_cast<at::ScalarType>(dtypes[i]));
    return out;
  }
};

struct LinearScattered : torch::autograd::Function<LinearScattered> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& z, const at::Tensor& weight, int64_t group_address,
                            int64_t services_address, const kernels::InputRecipe& recipe) {
    auto& group = group_at(group_address);
    const auto* s = services_at(services_address);
    const int64_t seq = z.size(1) / group.size();
    const auto w = kernels::compute_weight(weight, z.scalar_type(), s);
    auto y = ring_reduce_scatter(group, [&](int64_t c) { return at::linear(part(z, c, seq), w); });
    if (recipe.op == kernels::InputRecipe::Op::none) ctx->save_for_backward({z, w});
    else ctx->save_for_backward({w});
    kernels::keep_recipe(ctx, recipe, z.scalar_type(), s);
    ctx->saved_data["key"] = reinterpret_cast<int64_t>(weight.unsafeGetTensorImpl());
    ctx->saved_data["dtype"] = static_cast<int64_t>(weight.scalar_type());
    ctx->saved_data["group"] = group_address;
    ctx->saved_data["services"] = services_address;
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const auto z = kept_input(ctx, saved);
    const auto w = saved[0];
    auto& group = group_at(ctx->saved_data["group"].toInt());
    const auto* s = services_at(ctx->saved_data["services"].toInt());
    const auto key = ctx->saved_data["key"].toInt();
    const int64_t seq = z.size(1) / group.size();
    auto dz = at::empty_like(z);
    at::Tensor dw;
    ring_all_gather(group, grads[0], [&](int64_t c, const at::Tensor& dy) {
      part(dz, c, seq).copy_(at::matmul(dy, w));
      if (ctx->needs_input_grad(1)) add_weight_gradient(dw, s, key, dy, part(z, c, seq));
    });
    if (dw.defined()) dw = dw.to(static_cast<at::ScalarType>(ctx->saved_data["dtype"].toInt()));
    return {dz, dw, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

std::vector<at::Tensor> gathered_linear(const at::Tensor& x, at::TensorList weights, RankGroup& group,
                                        const kernels::WeightServices* services, bool ring,
                                        const kernels::InputRecipe& recipe) {
  return GatheredLinear::apply(x, weights, reinterpret_cast<int64_t>(&group), reinterpret_cast<int64_t>(services),
                               ring, recipe);
}

at::Tensor linear_scattered(const at::Tensor& z, const at::Tensor& weight, RankGroup& group,
                            const kernels::WeightServices* services, const kernels::InputRecipe& recipe) {
  return LinearScattered::apply(z, weight, reinterpret_cast<int64_t>(&group), reinterpret_cast<int64_t>(services),
                                recipe);
}

}  // namespace troupe::models
