// The training core of one rank: the model as units, the optimizer, the LR schedule, gradient
// accumulation and clipping. The stage actor owns one; the benchmark drives one without actors.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "config/job_config.h"
#include "train/step_stats.h"

namespace troupe::data { struct Batch; }
namespace troupe::models::llama3 { class Llama3Model; }

namespace troupe::train {

class Trainer {
 public:
  // vocab_size comes from the tokenizer, as torchtitan sizes the model from it.
  Trainer(const config::JobConfig& cfg, int64_t vocab_size);
  ~Trainer();
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;

  // Micro-batches per optimizer step (gradient accumulation).
  int64_t micro_batches_per_step() const;
  StepStats step(int64_t step, const std::vector<std::shared_ptr<const data::Batch>>& micro_batches);

  models::llama3::Llama3Model& model();
  std::string device() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// "auto" picks CUDA when a GPU is present.
std::string resolve_device(const std::string& requested);

}  // namespace troupe::train
