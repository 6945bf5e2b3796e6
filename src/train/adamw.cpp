#include "train/adamw.h"

#include <optional>

#include <torch/torch.h>

#include <stdexcept>

#ifdef TROUPE_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>

#include "kernels/adamw.h"
#include "kernels/weight_copies.h"
#endif

namespace troupe::train {

namespace {

// Troupe's own kernel takes contiguous fp32 tensors on one CUDA device, the divisor too: ATen's
// multi-tensor fused AdamW moves the 28 bytes of a parameter's update at about 60% of an H200's
// memory bandwidth.
bool own_kernel_fits(const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& grads,
                     const at::Tensor& divisor) {
#ifdef TROUPE_WITH_CUDA
  if (params.empty() || !params[0].is_cuda()) return false;
  auto fits = [&](const at::Tensor& t) {
    return t.device() == params[0].device() && t.scalar_type() == at::kFloat && t.is_contiguous();
  };
  if (divisor.defined() && (!fits(divisor) || divisor.numel() != 1)) return false;
  for (size_t i = 0; i < params.size(); ++i)
    if (!fits(params[i]) || !fits(grads[i])) return false;
  return true;
#else
  (void)params, (void)grads, (void)divisor;
  return false;
#endif
}

}  // namespace

AdamW::AdamW(std::vector<std::pair<std::string, at::Tensor>> named_params, AdamOptions options)
    : params_(std::move(named_params)), options_(options) {
  for (const auto& [name, p] : params_) {
    exp_avg_.push_back(torch::zeros_like(p, torch::MemoryFormat::Contiguous));
    exp_avg_sq_.push_back(torch::zeros_like(p, torch::MemoryFormat::Contiguous));
    // The fused kernels read the step count from a float tensor per parameter.
    step_tensors_.push_back(torch::zeros({}, p.options().dtype(torch::kFloat)));
  }
}

void AdamW::step(double lr, const at::Tensor& grad_divisor, const std::vector<size_t>& piece_ends,
                 const std::function<void(size_t)>& after_piece) {
  torch::NoGradGuard no_grad;
  ++steps_;
  const auto& o = options_;
  const auto scale = grad_divisor.defined() ? std::optional<at::Tensor>(grad_divisor) : std::nullopt;
  size_t first = 0;
  for (size_t k = 0; k <= piece_ends.size(); ++k) {
    const size_t last = k < piece_ends.size() ? std::min(piece_ends[k], params_.size()) : params_.size();
    std::vector<at::Tensor> params, grads, avgs, avg_sqs, steps;
    for (size_t i = first; i < last; ++i) {
      const auto& p = params_[i].second;
      if (!p.grad().defined()) continue;
      params.push_back(p);
      grads.push_back(p.grad());
      avgs.push_back(exp_avg_[i]);
      avg_sqs.push_back(exp_avg_sq_[i]);
      steps.push_back(step_tensors_[i]);
    }
    first = std::max(first, last);
    // ATen's kernel counts from these tensors, Troupe's from steps_: both count every step, so a
    // later step may take either.
    if (!params.empty()) at::_foreach_add_(steps, 1.0);
    if (own_kernel_fits(params, grads, grad_divisor)) {
#ifdef TROUPE_WITH_CUDA
      std::vector<kernels::AdamTensor> tensors;
      std::vector<bool> with_copy;
      for (size_t i = 0; i < params.size(); ++i) {
        const auto copy = copies_ ? copies_->copy_of(params[i]) : at::Tensor();  // rewritten whole
        with_copy.push_back(copy.defined());
        tensors.push_back({params[i].data_ptr<float>(), grads[i].data_ptr<float>(), avgs[i].data_ptr<float>(),
                           avg_sqs[i].data_ptr<float>(), params[i].numel(), copy.defined() ? copy.data_ptr() : nullptr});
      }
      kernels::adamw_update(tensors.data(), tensors.size(),
                            {lr, o.beta1, o.beta2, o.eps, o.weight_decay, o.decoupled}, steps_,
                            grad_divisor.defined() ? grad_divisor.data_ptr<float>() : nullptr,
                            at::cuda::getCurrentCUDAStream(params[0].get_device()).stream());
      // The kernel wrote through raw pointers: ATen's version counts learn of it here, every
      // one before any copy is marked (FSDP's masters are views sharing their unit's counter).
      for (const auto& p : params) p.unsafeGetTensorImpl()->bump_version();
      for (size_t i = 0; i < params.size(); ++i)
        if (with_copy[i]) copies_->mark_current(params[i]);
#endif
    } else if (!params.empty()) {
      if (o.decoupled)
        at::_fused_adamw_(params, grads, avgs, avg_sqs, {}, steps, lr, o.beta1, o.beta2, o.weight_decay, o.eps,
                          /*amsgrad=*/false, /*maximize=*/false, scale);
      else
        at::_fused_adam_(params, grads, avgs, avg_sqs, {}, steps, lr, o.beta1, o.beta2, o.weight_decay, o.eps,
                         /*amsgrad=*/false, /*maximize=*/false, scale);
    }
    if (k < piece_ends.size() && after_piece) after_piece(k);
  }
}

void AdamW::zero_grad() {
  for (auto& [name, p] : params_) p.mutable_grad() = at::Tensor();
}

std::map<std::string, at::Tensor> AdamW::state() const {
  std::map<std::string, at::Tensor> out;
  for (size_t i = 0; i < params_.size(); ++i) {
    out["exp_avg." + params_[i].first] = exp_avg_[i];
    out["exp_avg_sq." + params_[i].first] = exp_avg_sq_[i];
  }
  out["step"] = torch::full({1}, steps_, torch::kLong);
  return out;
}

void AdamW::load_state(const std::map<std::string, at::Tensor>& state) {
  auto find = [&](const std::string& name, const at::Tensor& like) -> const at::Tensor& {
    auto it = state.find(name);
    if (it == state.end()) throw std::runtime_error("optimizer state '" + name + "' is missing");
    if (it->second.sizes() != like.sizes())
      throw std::runtime_error("optimizer state '" + name + "' has shape " + c10::str(it->second.sizes()) +
                               ", expected " + c10::str(like.sizes()));
    return it->second;
  };
  const auto steps = find("step", torch::empty({1})).item<int64_t>();
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < params_.size(); ++i) {
    exp_avg_[i].copy_(find("exp_avg." + params_[i].first, exp_avg_[i]));
    exp_avg_sq_[i].copy_(find("exp_avg_sq." + params_[i].first, exp_avg_sq_[i]));
    step_tensors_[i].fill_(static_cast<double>(steps));
  }
  steps_ = steps;
}

}  // namespace troupe::train
