#include "checkpoint/module_state.h"

#include <torch/torch.h>

#include <set>
#include <stdexcept>

namespace troupe::checkpoint {

TensorMap parameters_of(torch::nn::Module& module) {
  TensorMap out;
  for (const auto& item : module.named_parameters()) out[item.key()] = item.value();
  return out;
}

void load_parameters(torch::nn::Module& module, const TensorMap& tensors) {
  std::vector<std::pair<std::string, at::Tensor>> params;
  for (const auto& item : module.named_parameters()) params.emplace_back(item.key(), item.value());
  load_parameters(params, tensors);
}

void load_parameters(const std::vector<std::pair<std::string, at::Tensor>>& params, const TensorMap& tensors) {
  std::set<std::string> names;
  for (const auto& [name, p] : params) {
    names.insert(name);
    auto it = tensors.find(name);
    if (it == tensors.end()) throw std::runtime_error("tensor '" + name + "' is missing");
    if (it->second.sizes() != p.sizes())
      throw std::runtime_error("tensor '" + name + "' has shape " + c10::str(it->second.sizes()) +
                               ", the model needs " + c10::str(p.sizes()));
  }
  for (const auto& [name, t] : tensors)
    if (!names.contains(name)) throw std::runtime_error("tensor '" + name + "' is not a parameter of the model");
  torch::NoGradGuard no_grad;
  for (const auto& [name, p] : params) p.detach().copy_(tensors.at(name));
}

}  // namespace troupe::checkpoint
