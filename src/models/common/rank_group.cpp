#include <torch/torch.h>

#include "models/rank_group.h"

#include "kernels/float8_linear.h"
#include "kernels/ops.h"
#include "kernels/weight_services.h"

namespace troupe::models {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// [n, B, s, ...] (rank-major, as the collectives lay it out) <-> [B, n * s, ...].
at::Tensor rank_major_to_sequence(const at::Tensor& stacked) {
  auto moved = stacked.movedim(0, 1);  // [B, n, s, ...]
  auto shape = moved.sizes().vec();
  shape[1] *= shape[2];
  shape.erase(shape.begin() + 2);
  return moved.reshape(shape);
}
at::Tensor sequence_to_rank_major(const at::Tensor& x, int64_t n) {
  auto shape = x.sizes().vec();
  TORCH_CHECK(shape.size() >= 2 && shape[1] % n == 0, "sequence parallelism: the sequence (", shape[1],
              ") must split into ", n, " equal parts");
  shape[1] /= n;
  shape.insert(shape.begin() + 1, n);
  return x.reshape(shape).movedim(1, 0).contiguous();  // [n, B, s, ...]
}

RankGroup& group_of(AutogradContext* ctx) {
  return *reinterpret_cast<RankGroup*>(ctx->saved_data["group"].toInt());
}

struct GatherSequence : torch::autograd::Function<GatherSequence> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, int64_t group) {
    ctx->saved_data["group"] = group;
    return reinterpret_cast<RankGroup*>(group)->all_gather_sequence(x);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return {group_of(ctx).reduce_scatter_sequence(grads[0]), at::Tensor()};
  }
};

struct ScatterSequenceSum : torch::autograd::Function<ScatterSequenceSum> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, int64_t group) {
    ctx->saved_data["group"] = group;
    return reinterpret_cast<RankGroup*>(group)->reduce_scatter_sequence(x);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return {group_of(ctx).all_gather_sequence(grads[0]), at::Tensor()};
  }
};

// The rows were sent before the call (so that the caller computes while they travel): the
// forward waits for them; the backward sends the gradient back the same way, counts swapped.
struct ExchangeRows : torch::autograd::Function<ExchangeRows> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, std::vector<int64_t> send_rows,
                            std::vector<int64_t> recv_rows, int64_t group, int64_t pending) {
    (void)x;
    ctx->saved_data["group"] = group;
    ctx->saved_data["send"] = send_rows;
    ctx->saved_data["recv"] = recv_rows;
    return reinterpret_cast<RankGroup::Transfer*>(pending)->wait();
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto send = ctx->saved_data["send"].toIntVector(), recv = ctx->saved_data["recv"].toIntVector();
    return {group_of(ctx).all_to_all(grads[0].contiguous(), recv, send), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor()};
  }
};

}  // namespace

at::Tensor RankGroup::all_gather_sequence(const at::Tensor& x) {
  return rank_major_to_sequence(all_gather(x.contiguous()));
}

at::Tensor RankGroup::reduce_scatter_sequence(const at::Tensor& x) {
  return reduce_scatter(sequence_to_rank_major(x, size()));
}

at::Tensor exchange_rows(const at::Tensor& x, const std::vector<int64_t>& send_rows,
                         const std::vector<int64_t>& recv_rows, RankGroup& group, const std::function<void()>& between) {
  auto pending = group.start_all_to_all(x.detach(), send_rows, recv_rows);
  if (between) between();
  return ExchangeRows::apply(x, send_rows, recv_rows, reinterpret_cast<int64_t>(&group),
                             reinterpret_cast<int64_t>(pending.get()));
}

at::Tensor gather_sequence(const at::Tensor& x, RankGroup& group) {
  return GatherSequence::apply(x, reinterpret_cast<int64_t>(&group));
}

at::Tensor scatter_sequence_sum(const at::Tensor& x, RankGroup& group) {
  return ScatterSequenceSum::apply(x, reinterpret_cast<int64_t>(&group));
}

std::vector<at::Tensor> project_whole_sequence(const at::Tensor& x, at::TensorList weights, RankGroup* tp,
                                               bool asynchronous, const kernels::InputRecipe& recipe,
                                               const kernels::WeightServices* services) {
  if (!tp) return kernels::linear_group(x, weights, recipe, services);
  // FP8 projections compute from the gathered sequence with their own kernels (and keep its
  // FP8 transpose, half the bf16 input).
  const bool fp8 = services && services->float8 &&
                   std::any_of(weights.begin(), weights.end(), [&](const auto& w) { return services->float8->has(w); });
  if (asynchronous || !fp8) return gathered_linear(x, weights, *tp, services, asynchronous);
  return kernels::linear_group(gather_sequence(x, *tp), weights, {}, services);
}

at::Tensor project_to_parts(const at::Tensor& z, const at::Tensor& weight, RankGroup* tp, bool asynchronous,
                            const kernels::InputRecipe& recipe, const kernels::WeightServices* services) {
  if (!tp) return kernels::linear(z, weight, recipe, services);
  if (asynchronous) return linear_scattered(z, weight, *tp, services);
  return scatter_sequence_sum(kernels::linear(z, weight, {}, services), *tp);
}

}  // namespace troupe::models
