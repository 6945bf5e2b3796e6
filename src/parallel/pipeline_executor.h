// One rank's part of a pipeline step (DESIGN §4): runs its list of actions from a Schedule in
// order. Receives are posted when the list reaches them, ahead of the compute that needs them;
// a compute waits for its input, and its output is sent as soon as the list says so; the step
// waits for every send at its end. Communication goes through the pipeline group's
// Communicator (Gloo on CPUs, NCCL on GPUs), so these messages never pass through CAF.
#pragma once
#include <ATen/core/Tensor.h>

#include <chrono>
#include <functional>
#include <map>
#include <vector>

#include "comm/communicator.h"
#include "parallel/pipeline_schedule.h"
#include "parallel/pipeline_simulation.h"
#include "parallel/pipeline_split.h"
#include "parallel/unit_executor.h"

namespace troupe::parallel::pp {

class PipelineExecutor {
 public:
  // `executor` runs this rank's units: those of its stages in ascending stage order. `comm` is
  // the pipeline group (rank r of it runs the schedule's rank r); `activation` is the shape and
  // options of what passes between stages ([micro-batch rows, seq, dim]).
  PipelineExecutor(Schedule schedule, int rank, StageSplit split, parallel::UnitExecutor& executor,
                   comm::CommunicatorPtr comm, std::vector<int64_t> activation_shape, at::TensorOptions activation);

  // Runs one batch split into the schedule's micro-batches; returns the micro-batches' losses
  // (device scalars, last stage only; empty elsewhere). The loss gradient is `loss_scale`.
  std::vector<at::Tensor> run(const std::vector<models::UnitBatch>& microbatches, double loss_scale);

  // Forward only through every stage of this rank for a whole batch (validation): the mean loss
  // on the last stage's rank, undefined elsewhere.
  at::Tensor evaluate(const models::UnitBatch& batch);

  // Records each action's start and end (steady clock, microseconds) when on; on a GPU it then
  // waits for the device after each compute so the times are the device's.
  void record(bool on) { record_ = on; }
  // What the runs recorded since the last call, as rank 0 of a one-rank timeline.
  std::vector<TimedAction> take_recorded();

  // Called as each action begins (the inspection console shows it).
  void on_action(std::function<void(const Action&)> f) { on_action_ = std::move(f); }

  const Schedule& schedule() const { return schedule_; }
  bool last_stage_here() const;

 private:
  using Key = std::pair<int, int>;  // (stage, micro-batch)
  struct Posted {
    at::Tensor tensor;
    comm::WorkPtr work;
  };
  at::Tensor take_input(const Action& a);
  at::Tensor take_grad(const Action& a, double loss_scale);
  void compute(const Action& a, const std::vector<models::UnitBatch>& mbs, double loss_scale,
               std::vector<at::Tensor>& losses);

  Schedule schedule_;
  int rank_;
  StageSplit split_;
  parallel::UnitExecutor& executor_;
  comm::CommunicatorPtr comm_;
  std::vector<int64_t> activation_shape_;
  at::TensorOptions activation_;
  std::map<int, int64_t> first_local_unit_;  // stage -> index of its first unit in executor_
  std::map<Key, Posted> received_forward_, received_backward_;
  std::map<Key, at::Tensor> outputs_, input_grads_;  // (stage, mb): its output; the gradient into it
  std::vector<Posted> sends_;
  std::function<void(const Action&)> on_action_;
  bool record_ = false;
  double compute_start_ = 0;
  std::vector<TimedAction> recorded_;
};

}  // namespace troupe::parallel::pp
