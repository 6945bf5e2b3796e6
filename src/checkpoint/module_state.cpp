#include "checkpoint/module_state.h"

#include <torch/torch.h>

#include <stdexcept>

namespace troupe::checkpoint {

TensorMap parameters_of(torch::nn::Module& module) {
  TensorMap out;
  for (const auto& item : module.named_parameters()) out[item.key()] = item.value();
  return out;
}

void load_parameters(torch::nn::Module& module, const TensorMap& tensors) {
  auto params = module.named_parameters();
  for (const auto& item : params) {
    auto it = tensors.find(item.key());
    if (it == tensors.end()) throw std::runtime_error("tensor '" + item.key() + "' is missing");
    if (it->second.sizes() != item.value().sizes())
      throw std::runtime_error("tensor '" + item.key() + "' has shape " + c10::str(it->second.sizes()) +
                               ", the model needs " + c10::str(item.value().sizes()));
  }
  for (const auto& [name, t] : tensors)
    if (!params.contains(name)) throw std::runtime_error("tensor '" + name + "' is not a parameter of the model");
  torch::NoGradGuard no_grad;
  for (auto& item : params) item.value().copy_(tensors.at(item.key()));
}

}  // namespace troupe::checkpoint
