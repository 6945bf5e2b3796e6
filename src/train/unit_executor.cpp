#include "train/unit_executor.h"

#include <torch/torch.h>

#include <stdexcept>

namespace troupe::train {

UnitExecutor::UnitExecutor(std::vector<models::UnitPtr> units, std::vector<bool> recompute, UnitHooks* hooks)
    : units_(std::move(units)), recompute_(std::move(recompute)), saved_(units_.size()), hooks_(hooks) {
  if (recompute_.size() != units_.size()) throw std::invalid_argument("recompute plan size != number of units");
}

at::Tensor UnitExecutor::forward_unit(size_t i, const at::Tensor& input, const models::UnitBatch& batch) {
  Saved& s = saved_.at(i);
  s.batch = batch;
  s.input = input.defined() ? input.detach().requires_grad_(true) : at::Tensor();
  if (hooks_) hooks_->before_forward(i);
  at::Tensor out;
  if (recompute_[i]) {
    torch::NoGradGuard no_grad;
    s.output = at::Tensor();
    out = units_[i]->forward(s.input, batch).detach();
  } else {
    s.output = units_[i]->forward(s.input, batch);
    out = s.output.detach();
  }
  if (hooks_) hooks_->after_forward(i);
  return out;
}

at::Tensor UnitExecutor::backward_unit(size_t i, const at::Tensor& grad_output) {
  Saved& s = saved_.at(i);
  if (hooks_) hooks_->before_backward(i);
  at::Tensor out = recompute_[i] ? units_[i]->forward(s.input, s.batch) : s.output;
  if (!out.defined()) throw std::logic_error("backward of a unit whose forward did not run");
  torch::autograd::backward({out}, {grad_output});
  at::Tensor grad_input = s.input.defined() ? s.input.grad() : at::Tensor();
  s = Saved{};  // activations of this unit are no longer needed
  if (hooks_) hooks_->after_backward(i);
  return grad_input;
}

at::Tensor UnitExecutor::forward(const models::UnitBatch& batch) {
  at::Tensor h;
  for (size_t i = 0; i < units_.size(); ++i) h = forward_unit(i, h, batch);
  return h;
}

at::Tensor UnitExecutor::forward_only(const models::UnitBatch& batch) {
  torch::NoGradGuard no_grad;
  at::Tensor h;
  for (size_t i = 0; i < units_.size(); ++i) {
    if (hooks_) hooks_->before_forward(i);
    h = units_[i]->forward(h, batch);
    if (hooks_) hooks_->after_forward(i);
  }
  return h;
}

void UnitExecutor::backward(double loss_scale) {
  const auto& loss = saved_.back().output.defined() ? saved_.back().output : saved_.back().input;
  at::Tensor grad = torch::full({}, loss_scale, loss.options().requires_grad(false));
  for (size_t i = units_.size(); i-- > 0;) grad = backward_unit(i, grad);
}

std::vector<bool> recompute_plan(size_t num_units, const std::string& mode, int64_t every_nth) {
  std::vector<bool> plan(num_units, false);
  if (mode == "none") return plan;
  if (mode != "full" && mode != "selective")
    throw std::invalid_argument("activation_checkpoint.mode: unknown '" + mode + "' (none, full, selective)");
  if (every_nth < 1) throw std::invalid_argument("activation_checkpoint.selective_ac_option must be >= 1");
  // Units 1..n-2 are the transformer blocks.
  for (size_t i = 1; i + 1 < num_units; ++i)
    plan[i] = mode == "full" || (static_cast<int64_t>(i - 1) % every_nth == 0);
  return plan;
}

}  // namespace troupe::train
