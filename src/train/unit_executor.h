// Runs a model unit by unit (DESIGN §3): each unit's forward takes its predecessor's output
// detached, and its backward is an autograd call on that unit alone. This is what lets a stage
// own a run of units, FSDP gather per unit, and activation checkpointing be a unit property.
#pragma once
#include <vector>

#include "models/unit.h"

namespace troupe::train {

class UnitExecutor {
 public:
  // recompute[i]: unit i keeps only its input and redoes its forward inside the backward.
  UnitExecutor(std::vector<models::UnitPtr> units, std::vector<bool> recompute);

  // Forward of every unit for one micro-batch; returns the loss (no graph attached).
  at::Tensor forward(const models::UnitBatch& batch);
  // Backward of every unit in reverse order; the loss gradient is `loss_scale`.
  void backward(double loss_scale);

  // Single-unit steps (pipeline stages and tests drive these directly).
  at::Tensor forward_unit(size_t i, const at::Tensor& input, const models::UnitBatch& batch);
  at::Tensor backward_unit(size_t i, const at::Tensor& grad_output);  // returns the input's gradient

  size_t size() const { return units_.size(); }

 private:
  struct Saved {
    at::Tensor input;   // detached, requires grad (undefined for the first unit)
    at::Tensor output;  // undefined while the unit is checkpointed
    models::UnitBatch batch;
  };
  std::vector<models::UnitPtr> units_;
  std::vector<bool> recompute_;
  std::vector<Saved> saved_;
};

// Which units to checkpoint for activation_checkpoint.mode: none | full | selective (every
// `every_nth` transformer block). The embedding and the head are never recomputed.
std::vector<bool> recompute_plan(size_t num_units, const std::string& mode, int64_t every_nth);

}  // namespace troupe::train
