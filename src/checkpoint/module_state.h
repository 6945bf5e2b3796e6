// A module's parameters as a name -> tensor map, and back (names as named_parameters gives).
#pragma once
#include "checkpoint/safetensors.h"

namespace torch::nn { class Module; }

namespace troupe::checkpoint {

TensorMap parameters_of(torch::nn::Module& module);

// Copies every parameter from `tensors` (converting dtype and device); a missing, surplus or
// wrongly shaped tensor is an error naming it, and nothing is copied in that case.
void load_parameters(torch::nn::Module& module, const TensorMap& tensors);
// The same for a chosen set of named parameters (a pipeline stage's).
void load_parameters(const std::vector<std::pair<std::string, at::Tensor>>& params, const TensorMap& tensors);

}  // namespace troupe::checkpoint
