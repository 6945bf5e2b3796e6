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

void sum_partial_gradients(const std::vector<at::Tensor>& tensors, comm::Communicator& tp) {
  std::vector<at::Tensor> grads;
  for (const auto& t : tensors)
    if (t.grad().defined()) grads.push_back(t.grad());
  if (grads.empty()) return;
  std::vector<at::Tensor> flat;
  for (const auto& g : grads) flat.push_back(g.reshape({-1}));
  auto buffer = at::cat(flat);
  tp.all_reduce(buffer, comm::ReduceOp::sum)->wait();
  int64_t offset = 0;
  for (auto& g : grads) {
    g.copy_(buffer.narrow(0, offset, g.numel()).view(g.sizes()));
    offset += g.numel();
  }
}

}  // namespace troupe::parallel
