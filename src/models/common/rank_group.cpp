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

// An exchange of rows is two autograd nodes around the caller's work (`between`): RowsDepart
// sends, RowsArrive waits. Their backwards run in the reverse order, RowsArrive's sending the
// gradient back (counts swapped) and RowsDepart's waiting for it, so the backward of what was
// computed between them (recorded between them, it runs between them) overlaps the return trip
// too. What the two nodes share: the transfer in flight.
struct RowsInFlight : torch::CustomClassHolder {
  std::unique_ptr<RankGroup::Transfer> transfer;
  at::Tensor take() {
    if (!transfer) throw std::logic_error("exchange_rows: no transfer in flight");
    auto t = std::exchange(transfer, nullptr);
    return t->wait();
  }
};

c10::intrusive_ptr<RowsInFlight> flight_of(AutogradContext* ctx) {
  return c10::static_intrusive_pointer_cast<RowsInFlight>(ctx->saved_data["flight"].toCapsule());
}

void save_exchange(AutogradContext* ctx, int64_t group, const std::vector<int64_t>& send,
                   const std::vector<int64_t>& recv, const c10::intrusive_ptr<RowsInFlight>& flight) {
  ctx->saved_data["group"] = group;
  ctx->saved_data["send"] = send;
  ctx->saved_data["recv"] = recv;
  ctx->saved_data["flight"] = c10::IValue::make_capsule(flight);
}

// Forward: sends `x`; its output only orders RowsArrive after it. Backward: the gradient's
// return trip, which RowsArrive's backward sent.
struct RowsDepart : torch::autograd::Function<RowsDepart> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, std::vector<int64_t> send_rows,
                            std::vector<int64_t> recv_rows, int64_t group, c10::intrusive_ptr<RowsInFlight> flight) {
    flight->transfer = reinterpret_cast<RankGroup*>(group)->start_all_to_all(x.detach(), send_rows, recv_rows);
    save_exchange(ctx, group, send_rows, recv_rows, flight);
    return at::empty({0}, x.options());
  }
  static variable_list backward(AutogradContext* ctx, variable_list) {
    return {flight_of(ctx)->take(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// Forward: the rows that arrived. Backward: sends their gradient back.
struct RowsArrive : torch::autograd::Function<RowsArrive> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& departed, std::vector<int64_t> send_rows,
                            std::vector<int64_t> recv_rows, int64_t group, c10::intrusive_ptr<RowsInFlight> flight) {
    (void)departed;
    save_exchange(ctx, group, send_rows, recv_rows, flight);
    return flight->take();
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto send = ctx->saved_data["send"].toIntVector(), recv = ctx->saved_data["recv"].toIntVector();
    flight_of(ctx)->transfer = group_of(ctx).start_all_to_all(grads[0].contiguous(), recv, send);
    // The departure's (empty) gradient: it only orders RowsDepart's backward after this one.
    return {at::empty({0}, grads[0].options()), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
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
  const auto address = reinterpret_cast<int64_t>(&group);
  const auto flight = c10::make_intrusive<RowsInFlight>();
  const auto departed = RowsDepart::apply(x.contiguous(), send_rows, recv_rows, address, flight);
  if (between) between();
  return RowsArrive::apply(departed, send_rows, recv_rows, address, flight);
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
  if (asynchronous || !fp8) return gathered_linear(x, weights, *tp, services, asynchronous, recipe);
  return kernels::linear_group(gather_sequence(x, *tp), weights, {}, services);
}

at::Tensor project_to_parts(const at::Tensor& z, const at::Tensor& weight, RankGroup* tp, bool asynchronous,
                            const kernels::InputRecipe& recipe, const kernels::WeightServices* services) {
  if (!tp) return kernels::linear(z, weight, recipe, services);
  if (asynchronous) return linear_scattered(z, weight, *tp, services, recipe);
  return scatter_sequence_sum(kernels::linear(z, weight, recipe, services), *tp);
}

}  // namespace troupe::models
