#include "parallel/unit_executor.h"

#include <torch/torch.h>

#include <stdexcept>

namespace troupe::parallel {

UnitExecutor::UnitExecutor(std::vector<models::UnitPtr> units, std::vector<bool> recompute, UnitHooks* hooks)
    : units_(std::move(units)), recompute_(std::move(recompute)), hooks_(hooks) {
  if (recompute_.size() != units_.size()) throw std::invalid_argument("recompute plan size != number of units");
}

UnitExecutor::Saved& UnitExecutor::saved(size_t slot, size_t i) {
  if (i >= units_.size()) throw std::out_of_range("unit " + std::to_string(i) + " of " + std::to_string(units_.size()));
  if (slot >= saved_.size()) saved_.resize(slot + 1, std::vector<Saved>(units_.size()));
  return saved_[slot][i];
}

at::Tensor UnitExecutor::forward_unit(size_t i, const at::Tensor& input, const models::UnitBatch& batch, size_t slot) {
  Saved& s = saved(slot, i);
  began("forward", i);
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
  s.batch.aux = nullptr;  // a recomputation reports nothing: the forward did
  if (hooks_) hooks_->after_forward(i);
  return out;
}

at::Tensor UnitExecutor::output_for_backward(size_t i, Saved& s) {
  at::Tensor out = s.output.defined() ? s.output : (recompute_[i] && s.batch.tokens.defined())
                                                       ? units_[i]->forward(s.input, s.batch)
                                                       : at::Tensor();
  if (!out.defined()) throw std::logic_error("backward of a unit whose forward did not run");
  return out;
}

bool UnitExecutor::backward_as_rows(size_t i, Saved& s, const at::Tensor& grad_output) {
  if (!hooks_ || s.input.defined() || !s.batch.tokens.defined() || !units_[i]->lookup_table().defined()) return false;
  if (!hooks_->backward_rows(i, s.batch.tokens, grad_output)) return false;
  s = Saved{};
  return true;
}

at::Tensor UnitExecutor::backward_unit(size_t i, const at::Tensor& grad_output, size_t slot) {
  Saved& s = saved(slot, i);
  began("backward", i);
  if (backward_as_rows(i, s, grad_output)) return at::Tensor();  // a first unit: no input gradient
  if (hooks_) hooks_->before_backward(i);
  const at::Tensor out = output_for_backward(i, s);
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
  return forward_only(0, units_.size(), at::Tensor(), batch);
}

at::Tensor UnitExecutor::forward_only(size_t first, size_t last, at::Tensor h, const models::UnitBatch& batch) {
  torch::NoGradGuard no_grad;
  for (size_t i = first; i < last; ++i) {
    began("evaluate", i);
    if (hooks_) hooks_->before_forward(i);
    h = units_[i]->forward(h, batch);
    if (hooks_) hooks_->after_forward(i);
  }
  return h;
}

at::Tensor UnitExecutor::backward_input_unit(size_t i, const at::Tensor& grad_output, size_t slot) {
  Saved& s = saved(slot, i);
  began("backward-input", i);
  s.grad_output = grad_output;
  if (!s.input.defined()) return at::Tensor();  // a first unit: only its weight half has work
  if (hooks_) hooks_->before_backward(i);
  s.output = output_for_backward(i, s);
  torch::autograd::backward({s.output}, {grad_output}, /*retain_graph=*/true, /*create_graph=*/false, {s.input});
  return s.input.grad();
}

void UnitExecutor::backward_weight_unit(size_t i, size_t slot) {
  Saved& s = saved(slot, i);
  began("backward-weight", i);
  if (!s.grad_output.defined()) throw std::logic_error("weight gradient of a unit before its input gradient");
  if (backward_as_rows(i, s, s.grad_output)) return;
  // FSDP may have freed the unit's gathered weights since the input half; before_backward
  // brings them back, and the graph reads them again.
  if (hooks_) hooks_->before_backward(i);
  s.output = output_for_backward(i, s);
  std::vector<at::Tensor> params;
  for (const auto& p : units_[i]->parameters())
    if (p.requires_grad()) params.push_back(p);
  torch::autograd::backward({s.output}, {s.grad_output}, /*retain_graph=*/false, /*create_graph=*/false, params);
  s = Saved{};
  if (hooks_) hooks_->after_backward(i);
}

void UnitExecutor::backward(double loss_scale) {
  const auto& last = saved(0, units_.size() - 1);
  const auto& loss = last.output.defined() ? last.output : last.input;
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

}  // namespace troupe::parallel
