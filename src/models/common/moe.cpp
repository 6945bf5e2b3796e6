#include "models/common/moe.h"

#include <torch/torch.h>

#include "kernels/moe_ops.h"
#include "kernels/ops.h"

#include <stdexcept>

namespace troupe::models {

namespace {

// Adds an auxiliary loss to the backward of a block's output: the output passes unchanged, and
// the loss's gradient is `scale` whatever reaches the output (Megatron's MoEAuxLossAutoScaler).
class WithAuxLoss : public torch::autograd::Function<WithAuxLoss> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& out, const at::Tensor& loss,
                            double scale) {
    ctx->saved_data["scale"] = scale;
    (void)loss;
    return out.view_as(out);
  }
  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx,
                                               torch::autograd::tensor_list grads) {
    const double scale = ctx->saved_data["scale"].toDouble();
    return {grads[0], at::full({}, scale, grads[0].options().dtype(at::kFloat)), at::Tensor()};
  }
};

}  // namespace

Routing route(const at::Tensor& logits, const at::Tensor& bias, const DecoderArgs& a) {
  kernels::RouteShape shape;
  shape.experts = a.num_experts;
  shape.top_k = a.top_k;
  shape.groups = std::max<int64_t>(1, a.n_expert_groups);
  shape.groups_kept = a.n_expert_groups > 1 ? a.n_limited_groups : 1;
  shape.sigmoid = a.sigmoid_scores;
  auto choice = kernels::route_choice(logits, bias, shape);
  Routing r{choice.experts, {}, choice.scores, choice.counts};
  r.weights = r.scores.gather(1, r.experts);
  if (a.route_norm) r.weights = r.weights / (r.weights.sum(-1, true) + 1e-20);
  if (a.route_scale != 1.0) r.weights = r.weights * a.route_scale;
  return r;
}

at::Tensor load_balancing_loss(const Routing& r, int64_t num_experts, int64_t sequences) {
  const auto tokens = r.scores.size(0) / sequences;
  const auto experts = r.experts.view({sequences, -1});
  const auto chosen = at::zeros({sequences, num_experts}, r.scores.options())
                          .scatter_add_(1, experts, at::ones(experts.sizes(), r.scores.options()));
  const auto share = chosen / static_cast<double>(tokens);
  const auto normalised = (r.scores / r.scores.sum(-1, true)).view({sequences, tokens, num_experts});
  return static_cast<double>(num_experts) * (share * normalised.mean(1)).sum(-1).mean();
}

at::Tensor GroupedExperts::forward(const at::Tensor& flat, const kernels::Permutation& p,
                                   bool recompute_elementwise) const {
  return kernels::grouped_swiglu(flat, p, w1, w2, w3, recompute_elementwise, services);
}

MoE::MoE(const DecoderArgs& a, const at::TensorOptions& o, const kernels::WeightServices* s) : args_(a) {
  router = register_module("router", std::make_shared<Router>(a, o, s));
  experts = register_module("experts", std::make_shared<GroupedExperts>(a, o, s));
  if (a.num_shared_experts > 0)
    shared_experts = register_module(
        "shared_experts", std::make_shared<FeedForward>(a.dim, a.num_shared_experts * a.moe_inter_dim, o, s));
  expert_bias = register_buffer("expert_bias", at::zeros({a.num_experts}, o.dtype(at::kFloat)));
}

at::Tensor MoE::forward(const at::Tensor& x, const UnitBatch& batch, int64_t layer,
                        const kernels::InputRecipe& recipe) const {
  const auto shape = x.sizes().vec();
  const auto dim = shape.back();
  const auto flat = x.reshape({-1, dim});
  const auto r = route(router->gate->forward(flat), args_.load_balance_coeff > 0 ? expert_bias : at::Tensor(), args_);

  // The token copies grouped by expert, through the experts, weighted and added back per token.
  const auto perm = kernels::permutation(r.experts, r.counts);
  const bool recompute = recipe.op != kernels::InputRecipe::Op::none;
  auto out = kernels::unpermute(experts->forward(flat, perm, recompute), r.weights, perm);
  if (shared_experts) out = out + shared_experts->forward(flat, recipe);
  out = out.view(shape);

  if (batch.aux)
    batch.aux->add("moe.layers." + std::to_string(layer) + ".tokens_per_expert", r.counts.to(at::kFloat));
  // The loss's gradient joins every forward that will be differentiated, a recomputed one too
  // (which reports nothing: the first forward did).
  const bool differentiated = at::GradMode::is_enabled();
  if (args_.aux_loss_coeff > 0 && (batch.aux || differentiated)) {
    const auto sequences = args_.aux_loss_per_sequence ? shape.front() : int64_t{1};
    const auto loss =
        load_balancing_loss(r, args_.num_experts, sequences) / static_cast<double>(args_.moe_blocks());
    if (batch.aux) batch.aux->add("moe.layers." + std::to_string(layer) + ".aux_loss", loss);
    if (differentiated) out = WithAuxLoss::apply(out, loss, args_.aux_loss_coeff * batch.loss_scale);
  }
  return out;
}

}  // namespace troupe::models
