#include "train/grad_norm.h"

#include <ATen/ATen.h>

namespace troupe::train {

at::Tensor squared_l2_norm(const std::vector<at::Tensor>& grads) {
  if (grads.front().is_cuda()) return at::stack(at::_foreach_norm(grads, 2)).pow(2).sum();
  std::vector<at::Tensor> norms;
  norms.reserve(grads.size());
  for (const auto& g : grads) norms.push_back(at::linalg_vector_norm(g, 2, std::nullopt, false, at::kDouble));
  return at::stack(norms).pow(2).sum().to(at::kFloat);
}

void scale_to_norm(const std::vector<at::Tensor>& grads, const at::Tensor& total, double max_norm) {
  at::_foreach_mul_(grads, at::clamp(max_norm / (total + 1e-6), std::nullopt, 1.0));
}

at::Tensor clip_to_global_norm(const std::vector<at::Tensor>& grads, double max_norm,
                               const std::vector<comm::Communicator*>& groups) {
  auto squares = grads.empty() ? at::zeros({}, at::kDouble) : squared_l2_norm(grads);
  for (auto* group : groups)
    if (group) group->all_reduce(squares, comm::ReduceOp::sum)->wait();
  const auto total = squares.sqrt();
  if (!grads.empty()) scale_to_norm(grads, total, max_norm);
  return total;
}

}  // namespace troupe::train
