#include "parallel/tensor_parallel.h"

#include <ATen/ATen.h>

namespace troupe::parallel {

void keep_piece(at::Tensor& parameter, const Placement& placement) {
  if (placement.splits.empty()) return;
  at::NoGradGuard no_grad;
  const auto box = placement.box();
  auto piece = parameter.detach();
  for (size_t d = 0; d < box.offsets.size(); ++d) piece = piece.narrow(static_cast<int64_t>(d), box.offsets[d], box.lengths[d]);
  parameter.set_data(piece.contiguous().clone());
}

void sum_partial_gradients(const std::vector<TpReplicated>& tensors, comm::Communicator& tp) {
  std::vector<const TpReplicated*> held;
  int64_t numel = 0;
  for (const auto& t : tensors)
    if (t.tensor.grad().defined()) {
      held.push_back(&t);
      numel += t.parts * t.tensor.grad().numel();
    }
  if (held.empty()) return;
  at::NoGradGuard no_grad;
  const auto& first = held.front()->tensor.grad();
  auto buffer = at::zeros({numel}, first.options());
  int64_t offset = 0;
  for (const auto* t : held) {
    const auto& g = t->tensor.grad();
    buffer.narrow(0, offset + t->part * g.numel(), g.numel()).copy_(g.reshape({-1}));
    offset += t->parts * g.numel();
  }
  tp.all_reduce(buffer, comm::ReduceOp::sum)->wait();
  offset = 0;
  for (const auto* t : held) {
    auto g = t->tensor.grad();
    g.copy_(buffer.narrow(0, offset + t->part * g.numel(), g.numel()).view(g.sizes()));
    offset += t->parts * g.numel();
  }
}

}  // namespace troupe::parallel
