// Adam / AdamW over a fixed list of named parameters, on ATen's fused kernels (CPU and CUDA:
// one kernel launch per step for all parameters instead of a dozen ops per tensor). Owns its
// state as named tensors so that checkpoints can save and reshard it like parameters.
#pragma once
#include <ATen/core/Tensor.h>

#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace troupe::kernels {
class WeightCopies;
}

namespace troupe::train {

struct AdamOptions {
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;
  bool decoupled = true;  // AdamW: decay the weights directly; Adam: add decay to the gradient
};

class AdamW {
 public:
  AdamW(std::vector<std::pair<std::string, at::Tensor>> named_params, AdamOptions options);

  // One update of every parameter that has a gradient, with learning rate `lr`; the gradients
  // are read divided by `grad_divisor` (an fp32 scalar on the parameters' device) when given:
  // gradient clipping inside the fused kernel. `piece_ends` (ascending parameter indices) splits
  // the update into several launches and `after_piece(k)` runs once piece k is issued: FSDP starts
  // gathering the first units for the next forward while the rest of the model is updated.
  void step(double lr, const at::Tensor& grad_divisor = {}, const std::vector<size_t>& piece_ends = {},
            const std::function<void(size_t)>& after_piece = {});
  void zero_grad();
  // The bf16 copies of the parameters the forwards use: where the update runs on Troupe's kernel,
  // it rewrites a parameter's current copy in the same pass (see kernels/weight_copies.h).
  void keep_copies(kernels::WeightCopies* copies) { copies_ = copies; }
  int64_t steps_taken() const { return steps_; }

  // "exp_avg.<param>", "exp_avg_sq.<param>" and "step" (a one-element tensor).
  std::map<std::string, at::Tensor> state() const;
  // Copies a state() map back; a missing or wrongly shaped tensor throws naming it.
  void load_state(const std::map<std::string, at::Tensor>& state);

 private:
  std::vector<std::pair<std::string, at::Tensor>> params_;
  std::vector<at::Tensor> exp_avg_, exp_avg_sq_, step_tensors_;
  AdamOptions options_;
  int64_t steps_ = 0;
  kernels::WeightCopies* copies_ = nullptr;
};

}  // namespace troupe::train
