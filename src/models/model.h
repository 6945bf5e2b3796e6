// What the layers above need of a built model, whatever its family: its units in order
// (DESIGN §3), and the few whole-model operations training and tests use.
#pragma once
#include <torch/nn/module.h>

#include <cstdint>
#include <utility>
#include <vector>

#include "kernels/weight_services.h"
#include "models/context_parallel.h"
#include "models/rank_group.h"
#include "models/unit.h"

namespace troupe::models {

class Model : public torch::nn::Module {
 public:
  virtual const std::vector<UnitPtr>& units() const = 0;

  // Logits [batch, seq, vocab] of the whole model (tests, evaluation of exports).
  virtual at::Tensor logits(const at::Tensor& tokens) = 0;
  // Mean loss through every unit.
  at::Tensor loss(const UnitBatch& batch) {
    at::Tensor h;
    for (auto& u : units()) h = u->forward(h, batch);
    return h;
  }

  // Mixed precision: parameters keep their dtype (fp32 masters), activations use `dtype`.
  virtual void set_compute_dtype(at::ScalarType dtype) = 0;
  // activation_checkpoint's "op" policy: keep the matmul and attention outputs, recompute the
  // element-wise ops in the backward.
  virtual void recompute_elementwise(bool on) = 0;
  // The family's initialisation; each unit draws from its own generator (seed, unit), so a
  // unit's values do not depend on which others are materialised.
  virtual void init_weights(uint64_t seed) = 0;

  // After each optimizer step: auxiliary-loss-free balancing moves each MoE block's expert bias
  // towards the step's mean load. `step` holds the step's units' reports, tokens per expert
  // summed over its micro-batches (and averaged over the data-parallel ranks).
  virtual void balance_experts(const AuxValues& step) { (void)step; }
  virtual bool balances_experts() const { return false; }

  // Tensor (and sequence) parallelism over `group`: the units' forwards compute with this rank's
  // part of each parameter the family's plan splits (Architecture::sharding_plan; parallelize
  // cuts the parameters by it right after) and exchange activations over the group.
  // std::invalid_argument if the family or its dimensions cannot.
  struct TensorParallelStyle {
    // parallelism.enable_async_tensor_parallel: the projections at the sequence's gathers and
    // scatters run as collective matmuls where the family has them.
    bool asynchronous = false;
    // Not parallelism.disable_loss_parallel: the loss on the vocabulary-sharded logits; else each
    // chunk's logits are gathered whole on every rank for it.
    bool loss_parallel = true;
  };
  virtual void apply_tensor_parallel(RankGroupPtr group, TensorParallelStyle style) {
    (void)group;
    (void)style;
    throw std::invalid_argument("this model family has no tensor-parallel plan");
  }

  // Context parallelism: the units' attention runs over `cp`'s group (every other op is per
  // token and needs nothing). std::invalid_argument if the family cannot.
  virtual void apply_context_parallel(const ContextParallel& cp) {
    (void)cp;
    throw std::invalid_argument("this model family has no context-parallel attention");
  }

  // Expert parallelism over `group`: each MoE block computes with this rank's share of the routed
  // experts (parallelize cuts their parameters by the plan's `experts` right after) and sends
  // every token copy to its expert's rank and back. std::invalid_argument if the family cannot.
  virtual void apply_expert_parallel(RankGroupPtr group) {
    (void)group;
    throw std::invalid_argument("this model family has no routed experts");
  }

  // Units that compute with another unit's parameters, as (borrower, owner): a head tied to the
  // embedding. Data parallelism gathers the owner's parameters for the borrower too.
  virtual std::vector<std::pair<size_t, size_t>> borrowed_units() const { return {}; }

  // What the ops of this model's parameters are handed (kernels/weight_services.h): the
  // trainer sets the optimizer's kept copies, parallelize FSDP's gradient sinks.
  kernels::WeightServices& weight_services() { return *services_; }

 protected:
  // On the heap: the modules keep its address.
  std::shared_ptr<kernels::WeightServices> services_ = std::make_shared<kernels::WeightServices>();
};

}  // namespace troupe::models
