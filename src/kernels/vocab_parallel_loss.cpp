#include "kernels/vocab_parallel_loss.h"

#include <torch/torch.h>

#include "kernels/gradient_sink.h"
#include "kernels/weight_copies.h"

namespace troupe::kernels {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct VocabParallelCrossEntropyFn : torch::autograd::Function<VocabParallelCrossEntropyFn> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& hidden, const at::Tensor& weight,
                            const at::Tensor& targets, int64_t vocab_start, int64_t reduce, int64_t services,
                            int64_t chunk_rows) {
    const auto& all_reduce = *reinterpret_cast<const GroupAllReduce*>(reduce);
    const auto* s = reinterpret_cast<const WeightServices*>(services);
    const auto dim = hidden.size(-1);
    auto h = hidden.reshape({-1, dim}).contiguous();
    auto t = targets.reshape({-1}).contiguous();
    const auto rows = h.size(0), local = weight.size(0);
    const auto acc = h.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
    auto w = compute_weight(weight, h.scalar_type(), s);
    auto count = (t >= 0).sum().clamp_min(1).to(acc);
    auto dh = at::empty_like(h);
    auto dw = at::zeros({local, dim}, weight.options().dtype(acc));
    const bool out_dtype = h.is_cuda() && h.scalar_type() != acc;  // GEMMs that write fp32 from bf16
    auto total = at::zeros({}, h.options().dtype(acc));
    for (int64_t r0 = 0; r0 < rows; r0 += chunk_rows) {
      const auto n = std::min(chunk_rows, rows - r0);
      auto hc = h.narrow(0, r0, n);
      auto tc = t.narrow(0, r0, n);
      // [n, local] in fp32: on CUDA the GEMM of bf16 operands writes it so itself. It becomes the
      // exponentials and then the logits' gradient in place: passes over a vocabulary-wide chunk
      // are most of the loss's time.
      auto logits = out_dtype ? at::mm(hc, w.t(), acc) : at::mm(hc, w.t()).to(acc);
      auto row_max = logits.amax(1);
      all_reduce(row_max, true);
      // The target's logit, from the rank that holds its row (zero elsewhere).
      auto mine = (tc >= vocab_start).logical_and(tc < vocab_start + local).to(acc);
      auto local_target = (tc - vocab_start).clamp(0, local - 1).unsqueeze(1);
      auto target_logit = logits.gather(1, local_target).squeeze(1) * mine;
      auto& e = logits.sub_(row_max.unsqueeze(1)).exp_();
      // The sums of exponentials and the targets' logits, summed over the group in one collective.
      auto sums = at::stack({e.sum(1), target_logit});
      all_reduce(sums, false);
      const auto sum_exp = sums[0];
      auto counted = (tc >= 0).to(acc);
      total += ((sum_exp.log() + row_max - sums[1]) * counted).sum();
      // d loss / d logits = (softmax - one-hot) / count on the counted rows.
      const auto weight_of_row = counted / count;
      auto& dlogits = e.mul_((weight_of_row / sum_exp).unsqueeze(1));
      dlogits.scatter_add_(1, local_target, -(mine * weight_of_row).unsqueeze(1));
      auto dl = dlogits.to(h.scalar_type());
      auto dh_rows = dh.narrow(0, r0, n);
      at::mm_out(dh_rows, dl, w);
      // The weight's gradient summed in fp32; on CUDA from a bf16 GEMM (an fp32 GEMM of the cast
      // operands took an H100 several times as long as the rest of the loss).
      if (out_dtype) dw.add_(at::mm(dl.t(), hc, acc));
      else dw.addmm_(dl.t().to(acc), hc.to(acc));
    }
    ctx->save_for_backward({dh.view(hidden.sizes()), dw});
    ctx->saved_data["services"] = services;
    ctx->saved_data["weight_dtype"] = static_cast<int64_t>(weight.scalar_type());
    ctx->saved_data["weight_key"] = reinterpret_cast<int64_t>(weight.unsafeGetTensorImpl());
    return total / count;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const auto scale = grads[0];
    variable_list out(7);
    if (ctx->needs_input_grad(0)) out[0] = saved[0] * scale.to(saved[0].scalar_type());
    if (ctx->needs_input_grad(1)) {
      auto dw = saved[1] * scale.to(saved[1].scalar_type());
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
                                        const WeightServices* services, int64_t chunk_rows) {
  return VocabParallelCrossEntropyFn::apply(hidden, weight, targets, vocab_start,
                                            reinterpret_cast<int64_t>(&all_reduce),
                                            reinterpret_cast<int64_t>(services), chunk_rows);
}

}  // namespace troupe::kernels
