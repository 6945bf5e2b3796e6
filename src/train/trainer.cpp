#include "train/trainer.h"

#include <torch/torch.h>

#include <chrono>
#include <stdexcept>

#include "checkpoint/module_state.h"
#include "data/batch.h"
#include "models/llama3/model.h"
#include <c10/cuda/CUDAFunctions.h>

#include "runtime/device_info.h"
#include "train/adamw.h"
#include "train/lr_schedule.h"
#include "train/unit_executor.h"

namespace troupe::train {

namespace {

AdamOptions adam_options(const config::OptimizerSection& o) {
  if (o.name != "AdamW" && o.name != "Adam")
    throw std::invalid_argument("optimizer.name: unknown '" + o.name + "' (AdamW, Adam)");
  return {o.beta1, o.beta2, o.eps, o.weight_decay, /*decoupled=*/o.name == "AdamW"};
}

std::vector<std::pair<std::string, at::Tensor>> named_parameters(torch::nn::Module& m) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& item : m.named_parameters()) out.emplace_back(item.key(), item.value());
  return out;
}

// Clips by the global L2 norm without a host sync mid-step (libtorch's clip_grad_norm_ reads the
// norm back before returning): the norm stays on the device until the step has been queued.
at::Tensor clip_grad_norm(const std::vector<at::Tensor>& params, double max_norm) {
  std::vector<at::Tensor> grads;
  for (const auto& p : params)
    if (p.grad().defined()) grads.push_back(p.grad());
  if (grads.empty()) return torch::zeros({}, torch::kDouble);
  const auto total = at::stack(at::_foreach_norm(grads, 2)).norm();
  at::_foreach_mul_(grads, at::clamp(max_norm / (total + 1e-6), std::nullopt, 1.0));
  return total;
}

int64_t selective_every(const config::ActivationCheckpointSection& ac) {
  if (ac.mode != "selective") return 1;
  return std::stoll(ac.selective_ac_option);
}

}  // namespace

std::string resolve_device(const std::string& requested) {
  if (requested == "cpu") return "cpu";
  if (requested == "cuda") {
    if (!torch::cuda::is_available()) throw std::runtime_error("job.device = cuda but no CUDA device is available");
    return "cuda";
  }
  if (requested == "auto") return torch::cuda::is_available() ? "cuda" : "cpu";
  throw std::invalid_argument("job.device: unknown '" + requested + "' (auto, cpu, cuda)");
}

struct Trainer::Impl {
  Impl(const config::JobConfig& cfg, int64_t vocab_size)
      : device(resolve_device(cfg.job.device)),
        args(make_args(cfg, vocab_size)),
        // Built on its device (the rotary tables are plain tensors that .to() would not move).
        model(std::make_shared<models::llama3::Llama3Model>(
            args, at::TensorOptions().dtype(at::kFloat).device(torch::Device(device)))),
        schedule(cfg.optimizer.lr, cfg.training.steps, cfg.lr_scheduler.warmup_steps,
                 cfg.lr_scheduler.decay_ratio < 0 ? std::nullopt : std::optional<double>(cfg.lr_scheduler.decay_ratio),
                 cfg.lr_scheduler.decay_type, cfg.lr_scheduler.min_lr_factor),
        max_norm(cfg.training.max_norm) {
    at::globalContext().setDeterministicAlgorithms(cfg.training.deterministic, /*warn_only=*/false);
    model->init_weights(static_cast<uint64_t>(cfg.job.seed));
    if (device == "cuda") {
      gpu = c10::cuda::current_device();
      peak_flops = runtime::peak_bf16_flops(runtime::cuda_device_name(gpu));
      if (cfg.training.mixed_precision_param == "bfloat16") model->set_compute_dtype(at::kBFloat16);
      // Flash attention for SDPA: the cuDNN backend fails to create its handle from libtorch's
      // C++ API on the GPU machine (CUDNN_STATUS_INTERNAL_ERROR), and flash is what the peer uses.
      at::globalContext().setSDPUseCuDNN(false);
    }
    flops_per_token = 6.0 * static_cast<double>(args.num_non_embedding_params()) +
                      12.0 * static_cast<double>(args.n_layers * args.n_heads * args.head_dim() * cfg.training.seq_len);
    params = model->parameters();
    optimizer = std::make_unique<AdamW>(named_parameters(*model), adam_options(cfg.optimizer));
    executor = std::make_unique<UnitExecutor>(
        model->units(), recompute_plan(model->units().size(), cfg.activation_checkpoint.mode,
                                       selective_every(cfg.activation_checkpoint)));
    const auto global = cfg.training.global_batch_size;
    accumulation = global < 0 ? 1 : global / cfg.training.local_batch_size;
  }

  static models::llama3::ModelArgs make_args(const config::JobConfig& cfg, int64_t vocab_size) {
    if (cfg.model.name != "llama3") throw std::invalid_argument("model.name: unknown '" + cfg.model.name + "' (llama3)");
    auto a = models::llama3::flavor(cfg.model.flavor);
    a.vocab_size = vocab_size;
    a.max_seq_len = cfg.training.seq_len;
    return a;
  }

  std::string device;
  models::llama3::ModelArgs args;
  std::shared_ptr<models::llama3::Llama3Model> model;
  LrSchedule schedule;
  double max_norm;
  std::vector<at::Tensor> params;
  std::unique_ptr<AdamW> optimizer;
  std::unique_ptr<UnitExecutor> executor;
  int64_t accumulation = 1;
  int64_t lr_offset = 0;
  int gpu = -1;  // CUDA device index, -1 on the CPU
  double peak_flops = 0, flops_per_token = 0;
};

Trainer::Trainer(const config::JobConfig& cfg, int64_t vocab_size) : impl_(std::make_unique<Impl>(cfg, vocab_size)) {}
Trainer::~Trainer() = default;

int64_t Trainer::micro_batches_per_step() const { return impl_->accumulation; }
models::llama3::Llama3Model& Trainer::model() { return *impl_->model; }
std::string Trainer::device() const { return impl_->device; }

StepStats Trainer::step(int64_t step, const std::vector<std::shared_ptr<const data::Batch>>& micro_batches) {
  auto& m = *impl_;
  if (static_cast<int64_t>(micro_batches.size()) != m.accumulation)
    throw std::invalid_argument("step needs " + std::to_string(m.accumulation) + " micro-batches, got " +
                                std::to_string(micro_batches.size()));
  const auto start = std::chrono::steady_clock::now();
  StepStats stats;
  stats.step = step;
  stats.lr = m.schedule.lr(step - m.lr_offset);
  m.optimizer->zero_grad();
  const auto dev = torch::Device(m.device);
  if (m.gpu >= 0) runtime::reset_gpu_memory_peaks(m.gpu);
  // The losses stay on the device until the end so that the host never waits mid-step.
  std::vector<at::Tensor> losses;
  for (const auto& b : micro_batches) {
    models::UnitBatch ub{b->tokens.to(dev, /*non_blocking=*/true), b->targets.to(dev, /*non_blocking=*/true)};
    losses.push_back(m.executor->forward(ub));
    m.executor->backward(1.0 / static_cast<double>(m.accumulation));
    stats.tokens += b->tokens.numel();
  }
  const auto grad_norm = clip_grad_norm(m.params, m.max_norm);
  m.optimizer->step(stats.lr);
  stats.loss = at::stack(losses).to(at::kDouble).mean().item<double>();
  stats.grad_norm = grad_norm.item<double>();
  stats.compute_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  stats.model_flops = m.flops_per_token * static_cast<double>(stats.tokens);
  stats.peak_flops_per_second = m.peak_flops;
  if (m.gpu >= 0) {
    const auto peaks = runtime::gpu_memory_peaks(m.gpu);
    stats.gpu_peak_active_bytes = peaks.active_bytes;
    stats.gpu_peak_reserved_bytes = peaks.reserved_bytes;
  }
  return stats;
}

double Trainer::evaluate(const data::Batch& batch) {
  torch::NoGradGuard no_grad;
  const auto dev = torch::Device(impl_->device);
  return impl_->model->loss({batch.tokens.to(dev), batch.targets.to(dev)}).to(at::kDouble).item<double>();
}

checkpoint::TensorMap Trainer::checkpoint_state(bool model_only) const {
  checkpoint::TensorMap out;
  for (const auto& [name, t] : checkpoint::parameters_of(*impl_->model)) out["model." + name] = t;
  if (!model_only)
    for (const auto& [name, t] : impl_->optimizer->state()) out["optim." + name] = t;
  return out;
}

void Trainer::load_checkpoint_state(const checkpoint::TensorMap& tensors) {
  checkpoint::TensorMap model, optim;
  for (const auto& [name, t] : tensors) {
    if (name.starts_with("model.")) model[name.substr(6)] = t;
    else if (name.starts_with("optim.")) optim[name.substr(6)] = t;
    else throw std::runtime_error("checkpoint tensor '" + name + "' belongs to neither the model nor the optimizer");
  }
  if (!model.empty()) checkpoint::load_parameters(*impl_->model, model);
  if (!optim.empty()) impl_->optimizer->load_state(optim);
}

void Trainer::set_lr_schedule_offset(int64_t offset) { impl_->lr_offset = offset; }
int64_t Trainer::lr_schedule_offset() const { return impl_->lr_offset; }

}  // namespace troupe::train
