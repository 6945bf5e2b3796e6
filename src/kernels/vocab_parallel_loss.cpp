#include "kernels/vocab_parallel_loss.h"

#include <torch/torch.h>

#include "kernels/gradient_sink.h"
#include "kernels/precomputed_gradient.h"
#include "kernels/weight_copies.h"
#ifdef TROUPE_WITH_CUDA
#include "kernels/cross_entropy.h"
#include "kernels/kernel_tensors.h"
#endif

namespace troupe::kernels {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Which of the chunk's targets `tc` fall in this rank's share [vocab_start, vocab_start + local)
// (1 or 0, in `acc`), and each one's column there ([n, 1], clamped into the share where it is not).
std::pair<at::Tensor, at::Tensor> targets_in_share(const at::Tensor& tc, int64_t vocab_start, int64_t local,
                                                   at::ScalarType acc) {
  return {(tc >= vocab_start).logical_and(tc < vocab_start + local).to(acc),
          (tc - vocab_start).clamp(0, local - 1).unsqueeze(1)};
}

// One chunk of rows against this rank's share of the vocabulary: its logits made into their
// gradient, d loss / d logits = (softmax − onehot) / count on the counted rows, in `h`'s dtype;
// the chunk's summed loss added to `total`. The row maxima, then the sums of exponentials and the
// targets' logits (one collective for both), are reduced over the group.
at::Tensor share_gradient(const at::Tensor& hc, const at::Tensor& w, const at::Tensor& tc, const at::Tensor& counted,
                          const at::Tensor& count, int64_t vocab_start, const GroupAllReduce& all_reduce,
                          at::Tensor& total) {
  const auto local = w.size(0);
  const auto acc = counted.scalar_type();
#ifdef TROUPE_WITH_CUDA
  if (use_kernels(hc)) {
    // In the compute dtype, as the unsharded loss's: one read for the share's statistics, one
    // read and write for the gradient (the passes over a vocabulary-wide chunk are most of the
    // loss's time beside its GEMMs).
    auto logits = at::mm(hc, w.t());
    const auto n = hc.size(0);
    auto stats = at::empty({3, n}, hc.options().dtype(at::kFloat));  // share max, sum of exp, target logit
    vocab_share_stats(kernel_dtype(logits), logits.data_ptr(), tc.data_ptr<int64_t>(), n, local, vocab_start,
                      stats[0].data_ptr<float>(), stats[1].data_ptr<float>(), stats[2].data_ptr<float>(), stream());
    auto row_max = stats[0].clone();
    all_reduce(row_max, true);
    auto sums = at::stack({stats[1] * (stats[0] - row_max).exp(), stats[2]});
    all_reduce(sums, false);
    total += ((sums[0].log() + row_max - sums[1]) * counted).sum();
    const auto inv_count = count.to(at::kFloat).reciprocal();
    vocab_share_gradient(kernel_dtype(logits), logits.data_ptr(), tc.data_ptr<int64_t>(), n, local, vocab_start,
                         row_max.data_ptr<float>(), sums[0].data_ptr<float>(), inv_count.data_ptr<float>(), stream());
    return logits;
  }
#endif
  auto logits = at::mm(hc, w.t()).to(acc);
  auto row_max = logits.amax(1);
  all_reduce(row_max, true);
  // The target's logit, from the rank that holds its row (zero elsewhere).
  const auto [mine, local_target] = targets_in_share(tc, vocab_start, local, acc);
  auto target_logit = logits.gather(1, local_target).squeeze(1) * mine;
  auto& e = logits.sub_(row_max.unsqueeze(1)).exp_();
  auto sums = at::stack({e.sum(1), target_logit});
  all_reduce(sums, false);
  const auto sum_exp = sums[0];
  total += ((sum_exp.log() + row_max - sums[1]) * counted).sum();
  const auto weight_of_row = counted / count;
  auto& dlogits = e.mul_((weight_of_row / sum_exp).unsqueeze(1));
  dlogits.scatter_add_(1, local_target, -(mine * weight_of_row).unsqueeze(1));
  return dlogits.to(hc.scalar_type());
}

// Loss parallel off: the chunk's logits gathered whole on every rank and its loss taken over them
// (the same on every rank), added to `total`; this rank's columns of their gradient.
at::Tensor whole_logits_gradient(const at::Tensor& hc, const at::Tensor& w, const at::Tensor& tc, const at::Tensor& counted,
                                 const at::Tensor& count, int64_t vocab_start, const GroupAllGather& all_gather,
                                 at::Tensor& total) {
  const auto local = w.size(0), n = hc.size(0);
  const auto acc = counted.scalar_type();
  auto logits = all_gather(at::mm(hc, w.t()).to(acc)).permute({1, 0, 2}).reshape({n, -1});
  const auto log_sum_exp = logits.logsumexp(1);
  total += ((log_sum_exp - logits.gather(1, tc.clamp_min(0).unsqueeze(1)).squeeze(1)) * counted).sum();
  const auto weight_of_row = counted / count;
  auto dlogits = logits.narrow(1, vocab_start, local).sub(log_sum_exp.unsqueeze(1)).exp_();
  dlogits.mul_(weight_of_row.unsqueeze(1));
  const auto [mine, local_target] = targets_in_share(tc, vocab_start, local, acc);
  dlogits.scatter_add_(1, local_target, -(mine * weight_of_row).unsqueeze(1));
  return dlogits.to(hc.scalar_type());
}

struct VocabParallelCrossEntropyFn : torch::autograd::Function<VocabParallelCrossEntropyFn> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& hidden, const at::Tensor& weight,
                            const at::Tensor& targets, int64_t vocab_start, int64_t reduce, int64_t services,
                            int64_t chunk_rows, int64_t gather) {
    const auto& all_reduce = *reinterpret_cast<const GroupAllReduce*>(reduce);
    const auto& all_gather = *reinterpret_cast<const GroupAllGather*>(gather);
    const auto* s = reinterpret_cast<const WeightServices*>(services);
    const auto dim = hidden.size(-1);
    auto h = hidden.reshape({-1, dim}).contiguous();
    auto t = targets.reshape({-1}).contiguous();
    const auto rows = h.size(0), local = weight.size(0);
    const auto acc = h.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
    auto w = compute_weight(weight, h.scalar_type(), s);
    auto count = (t >= 0).sum().clamp_min(1).to(acc);
    auto dh = at::empty_like(h);
    auto dw = at::empty({local, dim}, weight.options().dtype(acc));
    auto total = at::zeros({}, h.options().dtype(acc));
    for (int64_t r0 = 0; r0 < rows; r0 += chunk_rows) {
      const auto n = std::min(chunk_rows, rows - r0);
      auto hc = h.narrow(0, r0, n);
      auto tc = t.narrow(0, r0, n);
      auto counted = (tc >= 0).to(acc);
      // The chunk's logits, turned into their own gradient.
      auto dlogits = all_gather ? whole_logits_gradient(hc, w, tc, counted, count, vocab_start, all_gather, total)
                                : share_gradient(hc, w, tc, counted, count, vocab_start, all_reduce, total);
      auto dh_rows = dh.narrow(0, r0, n);
      at::mm_out(dh_rows, dlogits, w);
      product_into(dw, dlogits.t(), hc, r0 > 0);  // summed in fp32
    }
    ctx->save_for_backward({dh.view(hidden.sizes()), dw});
    ctx->saved_data["services"] = services;
    ctx->saved_data["weight_dtype"] = static_cast<int64_t>(weight.scalar_type());
    ctx->saved_data["weight_key"] = reinterpret_cast<int64_t>(weight.unsafeGetTensorImpl());
    return total / count;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    variable_list out(8);
    // Each gradient scaled once, by the backward that asks for it (a split backward asks twice).
    if (ctx->needs_input_grad(0)) out[0] = scale_precomputed(saved[0], grads[0]);
    if (ctx->needs_input_grad(1)) {
      auto dw = scale_precomputed(saved[1], grads[0]);
      const auto* s = reinterpret_cast<const WeightServices*>(ctx->saved_data["services"].toInt());
      const auto weight_dtype = static_cast<at::ScalarType>(ctx->saved_data["weight_dtype"].toInt());
      if (!sink_gradient(s, reinterpret_cast<const void*>(ctx->saved_data["weight_key"].toInt()), dw))
        out[1] = dw.to(weight_dtype);
    }
    return out;
  }
};

}  // namespace

at::Tensor vocab_parallel_cross_entropy(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& targets,
                                        int64_t vocab_start, const GroupAllReduce& all_reduce,
                                        const GroupAllGather& all_gather, const WeightServices* services,
                                        int64_t chunk_rows) {
  return VocabParallelCrossEntropyFn::apply(hidden, weight, targets, vocab_start,
                                            reinterpret_cast<int64_t>(&all_reduce),
                                            reinterpret_cast<int64_t>(services), chunk_rows,
                                            reinterpret_cast<int64_t>(&all_gather));
}

}  // namespace troupe::kernels
