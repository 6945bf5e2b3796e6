#include "models/common/moe.h"

#include <torch/torch.h>

#include "kernels/ops.h"

#include <limits>
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
  Routing r;
  // In fp32 (fp64 for an fp64 model), as HF's routers.
  const auto wide = logits.scalar_type() == at::kDouble ? logits : logits.to(at::kFloat);
  r.scores = a.sigmoid_scores ? at::sigmoid(wide) : at::softmax(wide, -1);
  at::Tensor choice = bias.defined() ? r.scores + bias : r.scores;
  if (a.n_expert_groups > 1) {
    // Only the experts of each token's n_limited_groups best groups stay eligible (DeepSeek's
    // node-limited routing): a group scores the sum of its best two experts (one in a group of one).
    const auto tokens = choice.size(0);
    const auto per_group = a.num_experts / a.n_expert_groups;
    const auto grouped = choice.detach().view({tokens, a.n_expert_groups, per_group});
    const auto group_score = std::get<0>(grouped.topk(std::min<int64_t>(2, per_group), -1)).sum(-1);
    const auto best = std::get<1>(group_score.topk(a.n_limited_groups, -1, true, false));
    const auto keep = at::zeros_like(group_score, at::kBool).scatter_(1, best, true);
    choice = choice.masked_fill(keep.unsqueeze(-1).expand_as(grouped).reshape_as(choice).logical_not(),
                                -std::numeric_limits<double>::infinity());
  }
  r.experts = std::get<1>(choice.detach().topk(a.top_k, -1));
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

at::Tensor GroupedExperts::forward(const at::Tensor& x, const at::Tensor& counts) const {
  const auto dtype = x.scalar_type();
  const auto a = w1.to(dtype), b = w2.to(dtype), c = w3.to(dtype);
  if (dtype != at::kDouble) {
    const auto ends = at::cumsum(counts, 0).to(at::kInt);
    const auto gate = at::_grouped_mm(x, a.transpose(1, 2), ends);
    const auto up = at::_grouped_mm(x, c.transpose(1, 2), ends);
    return at::_grouped_mm(kernels::swiglu(gate, up), b.transpose(1, 2), ends);
  }
  const auto host = counts.to(at::kCPU);
  std::vector<at::Tensor> outs;
  int64_t offset = 0;
  for (int64_t e = 0; e < host.numel(); ++e) {
    const auto n = host[e].item<int64_t>();
    if (n == 0) continue;
    const auto rows = x.narrow(0, offset, n);
    outs.push_back(at::mm(kernels::swiglu(at::mm(rows, a[e].t()), at::mm(rows, c[e].t())), b[e].t()));
    offset += n;
  }
  return outs.empty() ? at::zeros_like(x) : at::cat(outs);
}

MoE::MoE(const DecoderArgs& a, const at::TensorOptions& o, const kernels::WeightServices* s) : args_(a) {
  router = register_module("router", std::make_shared<Router>(a, o, s));
  experts = register_module("experts", std::make_shared<GroupedExperts>(a, o));
  if (a.num_shared_experts > 0)
    shared_experts = register_module(
        "shared_experts", std::make_shared<FeedForward>(a.dim, a.num_shared_experts * a.moe_inter_dim, o, s));
  expert_bias = register_buffer("expert_bias", at::zeros({a.num_experts}, o.dtype(at::kFloat)));
}

at::Tensor MoE::forward(const at::Tensor& x, const UnitBatch& batch, int64_t layer) const {
  const auto shape = x.sizes().vec();
  const auto dim = shape.back();
  const auto flat = x.reshape({-1, dim});
  const auto r = route(router->gate->forward(flat), args_.load_balance_coeff > 0 ? expert_bias : at::Tensor(), args_);

  // Token copies in expert order: the k-th choice of token t is row t * top_k + k.
  const auto choices = r.experts.reshape({-1});
  const auto order = std::get<1>(at::sort(choices, std::optional<bool>(true), 0, false));
  const auto counts = at::bincount(choices, {}, args_.num_experts);
  const auto token_of = at::floor_divide(order, args_.top_k);
  auto routed = experts->forward(flat.index_select(0, token_of), counts);
  routed = routed * r.weights.reshape({-1}).index_select(0, order).unsqueeze(1).to(routed.scalar_type());
  auto out = at::zeros_like(flat).index_add(0, token_of, routed);
  if (shared_experts) out = out + shared_experts->forward(flat);
  out = out.view(shape);

  if (batch.aux)
    batch.aux->add("moe.layers." + std::to_string(layer) + ".tokens_per_expert", counts.to(at::kFloat));
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
