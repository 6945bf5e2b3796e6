#include "parallel/grad_norm.h"

#include <ATen/ATen.h>

namespace troupe::parallel {

at::Tensor squared_l2_norm(const std::vector<at::Tensor>& grads) {
  if (grads.front().is_cuda()) return at::stack(at::_foreach_norm(grads, 2)).pow(2).sum();
  std::vector<at::Tensor> norms;
  norms.reserve(grads.size());
  for (const auto& g : grads) norms.push_back(at::linalg_vector_norm(g, 2, std::nullopt, false, at::kDouble));
  return at::stack(norms).pow(2).sum().to(at::kFloat);
}

at::Tensor global_norm(const std::vector<at::Tensor>& grads, const std::vector<comm::Communicator*>& groups) {
  auto squares = grads.empty() ? at::zeros({}, at::kDouble) : squared_l2_norm(grads);
  for (auto* group : groups)
    if (group) group->all_reduce(squares, comm::ReduceOp::sum)->wait();
  return squares.sqrt();
}

at::Tensor clip_divisor(const at::Tensor& norm, double max_norm, at::Device device) {
  return at::clamp_min((norm.to(device, at::kFloat) + 1e-6) / max_norm, 1.0);
}

}  // namespace troupe::parallel
