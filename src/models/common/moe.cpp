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

at::Tensor routed_over_ranks(const at::Tensor& flat, const kernels::Permutation& p, const GroupedExperts& experts,
                             bool recompute, RankGroup& group, AuxValues* aux,
                             const std::function<void()>& while_dispatched) {
  const int64_t n = group.size(), all = p.counts.numel(), local = all / n;
  std::vector<int64_t> every(static_cast<size_t>(n), local);
  // Each rank learns how many copies every peer sends each of its experts: [n, local].
  const auto incoming = group.all_to_all(p.counts.to(at::kLong).reshape({all, 1}), every, every).view({n, local});
  const auto host = at::cat({p.counts.to(at::kLong), incoming.reshape({-1})}).cpu();
  const auto* counts = host.data_ptr<int64_t>();
  std::vector<int64_t> send(static_cast<size_t>(n), 0), recv(static_cast<size_t>(n), 0);
  for (int64_t r = 0; r < n; ++r)
    for (int64_t e = 0; e < local; ++e) {
      send[r] += counts[r * local + e];
      recv[r] += counts[all + r * local + e];
    }
  // The copies grouped by expert are grouped by the rank holding it: they go out in that order and
  // arrive by source rank, then expert; regrouped by this rank's expert for the grouped GEMMs.
  const auto arrived = exchange_rows(kernels::permute(flat, p), send, recv, group, while_dispatched);
  int64_t arriving = 0;
  for (auto r : recv) arriving += r;
  // With its length given, repeat_interleave needs no second host sync.
  const auto expert_of_row =
      at::arange(local, incoming.options()).repeat({n}).repeat_interleave(incoming.reshape({-1}), 0, arriving);
  const auto by_expert = kernels::permutation(expert_of_row.reshape({-1, 1}), incoming.sum(0));
  const auto computed = experts.forward(arrived, by_expert, recompute);
  const auto ones = at::ones({arrived.size(0), 1}, arrived.options().dtype(at::kFloat));
  const auto back = exchange_rows(kernels::unpermute(computed, ones, by_expert), recv, send, group);
  if (aux) {
    int64_t sent = 0;
    for (auto r : send) sent += r;
    const auto prefix = "ep.rank" + std::to_string(group.rank());
    const double row_bytes = static_cast<double>(flat.size(1) * flat.element_size());
    aux->add(prefix + ".tokens", at::full({}, static_cast<double>(arriving), at::kDouble));
    aux->add(prefix + ".all_to_all_bytes", at::full({}, 2.0 * static_cast<double>(sent + arriving) * row_bytes, at::kDouble));
  }
  return back;
}

namespace {

// Of `rows` (int64 indices into the whole sequence, ascending), those in this tp rank's part of
// `part` positions, as indices into the part.
at::Tensor this_ranks_rows(const at::Tensor& rows, int64_t part, const RankGroup& tp) {
  const int64_t first = tp.rank() * part;
  return rows.masked_select((rows >= first).logical_and_(rows < first + part)) - first;
}

}  // namespace

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
  // Under tp with ep (torchtitan's etp 1), each tp rank routes its own part of the sequence to
  // whole experts over the ep ranks, which include the tp ranks; only the shared experts, split
  // by width, see the whole sequence. Under tp alone every rank routes all of it to its slices.
  const bool own_part = tp && ep;
  const auto gathered = tp && !own_part ? gather_sequence(x, *tp) : x;
  const bool cut = batch.scored_rows.defined();
  // The scored rows index the whole sequence: this rank's part holds rows [rank * s, rank * s + s).
  const auto scored = !cut || !own_part ? batch.scored_rows : this_ranks_rows(batch.scored_rows, x.size(1), *tp);
  const auto whole = cut ? gathered.index_select(1, scored) : gathered;
  const auto shape = whole.sizes().vec();
  const auto dim = shape.back();
  const auto flat = whole.reshape({-1, dim});
  const auto r = route(router->gate->forward(flat), args_.load_balance_coeff > 0 ? expert_bias : at::Tensor(), args_);

  // The token copies grouped by expert, through the experts, weighted and added back per token.
  const auto perm = kernels::permutation(r.experts, r.counts);
  const bool recompute = recipe.op != kernels::InputRecipe::Op::none;
  // The recipe recomputes x: the shared experts take it only where their input is x itself, not
  // gathered over tp nor cut to the scored rows.
  const auto shared_recipe = tp || cut ? kernels::InputRecipe{} : recipe;
  // Under expert parallelism the shared experts compute while the copies travel.
  at::Tensor shared;
  std::function<void()> compute_shared;
  if (shared_experts && own_part)  // the whole sequence, this rank's slice of the width, summed into its part
    compute_shared = [&] {
      const auto all = gather_sequence(x, *tp);
      auto partial = shared_experts->forward(cut ? all.index_select(1, batch.scored_rows) : all, shared_recipe);
      if (cut) partial = at::zeros_like(all).index_copy(1, batch.scored_rows, partial);
      shared = scatter_sequence_sum(partial, *tp).reshape({-1, dim});
      if (cut) shared = shared.view({x.size(0), x.size(1), dim}).index_select(1, scored).reshape({-1, dim});
    };
  else if (shared_experts)
    compute_shared = [&] { shared = shared_experts->forward(flat, shared_recipe); };
  // (Their own collectives over the tp group wait until the dispatch is done.)
  const auto routed = ep ? routed_over_ranks(flat, perm, *experts, recompute, *ep, batch.aux,
                                             own_part ? std::function<void()>() : compute_shared)
                        : experts->forward(flat, perm, recompute);
  auto out = kernels::unpermute(routed, r.weights, perm);
  if (shared_experts) {
    if (!shared.defined()) compute_shared();
    out = out + shared;
  }
  out = out.view(shape);
  if (cut) out = at::zeros_like(gathered).index_copy(1, scored, out);  // unscored: zero
  if (tp && !own_part) out = scatter_sequence_sum(out, *tp);

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
    // Every tp rank computes the same loss (or, routing its own part, its part's): each adds its
    // tp-th of the gradient, which the router's gradient sums over the tp ranks.
    const double ranks = tp ? static_cast<double>(tp->size()) : 1.0;
    if (differentiated) out = WithAuxLoss::apply(out, loss, args_.aux_loss_coeff * batch.loss_scale / ranks);
  }
  return out;
}

}  // namespace troupe::models
