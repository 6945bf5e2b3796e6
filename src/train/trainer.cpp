#include "train/trainer.h"

#include <torch/torch.h>

#include <chrono>
#include <stdexcept>

#include "data/batch.h"
#include "models/llama3/model.h"
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
        model(std::make_shared<models::llama3::Llama3Model>(args, at::TensorOptions().dtype(at::kFloat))),
        schedule(cfg.optimizer.lr, cfg.training.steps, cfg.lr_scheduler.warmup_steps,
                 cfg.lr_scheduler.decay_ratio < 0 ? std::nullopt : std::optional<double>(cfg.lr_scheduler.decay_ratio),
                 cfg.lr_scheduler.decay_type, cfg.lr_scheduler.min_lr_factor),
        max_norm(cfg.training.max_norm) {
    at::globalContext().setDeterministicAlgorithms(cfg.training.deterministic, /*warn_only=*/false);
    model->init_weights(static_cast<uint64_t>(cfg.job.seed));
    model->to(torch::Device(device));
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
  stats.lr = m.schedule.lr(step);
  m.optimizer->zero_grad();
  const auto dev = torch::Device(m.device);
  double loss_sum = 0;
  for (const auto& b : micro_batches) {
    models::UnitBatch ub{b->tokens.to(dev), b->targets.to(dev)};
    loss_sum += m.executor->forward(ub).item<double>();
    m.executor->backward(1.0 / static_cast<double>(m.accumulation));
    stats.tokens += b->tokens.numel();
  }
  stats.loss = loss_sum / static_cast<double>(m.accumulation);
  stats.grad_norm = torch::nn::utils::clip_grad_norm_(m.params, m.max_norm);
  m.optimizer->step(stats.lr);
  stats.compute_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return stats;
}

}  // namespace troupe::train
