// The training core of one rank: the model as units, the optimizer, the LR schedule, gradient
// accumulation and clipping. The stage actor owns one; the benchmark drives one without actors.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "checkpoint/host_snapshot.h"
#include "checkpoint/safetensors.h"
#include "config/job_config.h"
#include "parallel/rank_context.h"
#include "train/step_stats.h"

#include "models/architecture.h"

namespace troupe::data { struct Batch; }
namespace troupe::models { class Model; }

namespace troupe::train {

class Trainer {
 public:
  // `architecture`: the model to train (train/job_model.h gives the job's). With more than one
  // rank, every rank of the job constructs its Trainer at the same time (the data-parallel
  // communicators connect here) and the model is sharded per [parallelism].
  Trainer(const config::JobConfig& cfg, models::ArchitecturePtr architecture, parallel::RankContext rank = {});
  ~Trainer();
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;

  // Micro-batches per optimizer step (gradient accumulation).
  int64_t micro_batches_per_step() const;
  // Called with 1, 2, ... as each micro-batch of a step begins (the inspection console shows it).
  void on_micro_batch(std::function<void(int64_t)> progress);
  // With a pipeline: called as each action of the rank's schedule begins, with what it is
  // ("pipeline-F", -B, -I, -W, -send, -recv: static strings) and its micro-batch.
  void on_pipeline_action(std::function<void(const char*, int64_t)> progress);
  // Called as each unit's forward or backward begins (UnitExecutor::on_unit), and with unit -1
  // as the optimizer step and the loss's read-back (where the host waits for the device) begin.
  void on_activity(std::function<void(const char*, int64_t)> began);
  // The returned loss and grad norm are the whole job's (averaged over data-parallel ranks);
  // tokens and FLOPs are this rank's.
  StepStats step(int64_t step, const std::vector<std::shared_ptr<const data::Batch>>& micro_batches);
  // Validation: the mean loss of `batch` through the whole model, forward only (no gradients,
  // no optimizer or schedule change).
  double evaluate(const data::Batch& batch);

  models::Model& model();
  const models::Architecture& architecture() const;
  std::string device() const;

  // Checkpoints. The model's parameters as "model.<name>", its units' buffers (a MoE block's
  // expert bias) as "buffer.<name>" and, unless model_only, the
  // optimizer's state as "optim.<key>": live tensors on the training device, to be copied, each
  // with its box in the whole tensor (this rank's FSDP chunk when sharded). Replicated state
  // is listed by one rank only (the first replica), so each piece is saved once.
  std::vector<checkpoint::LiveTensor> checkpoint_state(bool model_only) const;
  // The pieces this rank restores: every state tensor it holds, whether or not it saves it.
  std::vector<checkpoint::LiveTensor> restorable_state(bool model_only) const;
  // Copies in tensors named as checkpoint_state() names them (each shaped as its box): all of
  // the model's or none, all of the optimizer's or none; a missing, surplus or wrongly shaped
  // one throws naming it.
  void load_checkpoint_state(const checkpoint::TensorMap& tensors);
  // Step s uses the schedule's step s - offset: a resumed run whose schedule starts over.
  void set_lr_schedule_offset(int64_t offset);
  int64_t lr_schedule_offset() const;

 private:
  void copy_buffer(const std::string& name, const at::Tensor& value);
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// What every rank's Trainer would refuse about the job's layout, checked once before any rank
// starts: the parallel degrees against `world`, the pipeline's split and schedule, the global
// batch, the optimizer and the precisions. Throws std::invalid_argument naming the key.
void check_layout(const config::JobConfig& cfg, int world, const models::Architecture& model);
// Whether model.converters turns the projections to FP8 (train/float8_converter.h).
bool converts_float8(const config::JobConfig& cfg);

// "auto" picks CUDA when a GPU is present.
std::string resolve_device(const std::string& requested);
// How many ranks this process hosts: job.local_ranks, or (-1) every visible GPU on CUDA and
// one rank on the CPU.
int local_rank_count(const config::JobConfig& cfg);

}  // namespace troupe::train
