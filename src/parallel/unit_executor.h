// Runs a model unit by unit (DESIGN §3): each unit's forward takes its predecessor's output
// detached, and its backward is an autograd call on that unit alone. This is what lets a stage
// own a run of units, FSDP gather per unit, and activation checkpointing be a unit property.
#pragma once
#include <functional>
#include <vector>

#include "models/unit.h"

namespace troupe::parallel {

// What a parallelism does around each unit (FSDP: gather its parameters before, free them and
// reduce its gradients after). Called on the executor's thread in schedule order.
class UnitHooks {
 public:
  virtual ~UnitHooks() = default;
  virtual void before_forward(size_t unit) = 0;
  virtual void after_forward(size_t unit) = 0;
  virtual void before_backward(size_t unit) = 0;
  virtual void after_backward(size_t unit) = 0;
  // In place of before_backward, the autograd call and after_backward for a first unit with a
  // lookup table: its gradient from the rows `grad_output` of `tokens`. False: not taken, the
  // backward runs as usual.
  virtual bool backward_rows(size_t unit, const at::Tensor& tokens, const at::Tensor& grad_output) { return false; }
};

class UnitExecutor {
 public:
  // recompute[i]: unit i keeps only its input and redoes its forward inside the backward.
  // `hooks` (may be null) must outlive the executor.
  UnitExecutor(std::vector<models::UnitPtr> units, std::vector<bool> recompute, UnitHooks* hooks = nullptr);

  // Forward of every unit for one micro-batch; returns the loss (no graph attached).
  at::Tensor forward(const models::UnitBatch& batch);
  // Backward of every unit in reverse order; the loss gradient is `loss_scale`.
  void backward(double loss_scale);
  // Forward of every unit without gradients or saved activations (evaluation).
  at::Tensor forward_only(const models::UnitBatch& batch);
  // The same over units [first, last) from `input` (a pipeline stage's share).
  at::Tensor forward_only(size_t first, size_t last, at::Tensor input, const models::UnitBatch& batch);

  // Single-unit steps (pipeline stages and tests drive these directly). `slot` keeps the saved
  // activations of several micro-batches apart (a pipeline holds many at once).
  at::Tensor forward_unit(size_t i, const at::Tensor& input, const models::UnitBatch& batch, size_t slot = 0);
  // Returns the input's gradient; the parameters' gradients accumulate in their .grad.
  at::Tensor backward_unit(size_t i, const at::Tensor& grad_output, size_t slot = 0);
  // The same backward in two halves (zero-bubble schedules): the input's gradient first, keeping
  // the graph; the parameters' gradients later. The second half walks the graph again.
  at::Tensor backward_input_unit(size_t i, const at::Tensor& grad_output, size_t slot);
  void backward_weight_unit(size_t i, size_t slot);

  size_t size() const { return units_.size(); }

  // Called as each unit's forward or backward begins, with what ("forward", "backward",
  // "backward-input", "backward-weight", "evaluate": static strings) and the unit: the status
  // board's heartbeat, and what it shows a stuck rank was doing.
  void on_unit(std::function<void(const char*, size_t)> began) { began_ = std::move(began); }

 private:
  struct Saved {
    at::Tensor input;   // detached, requires grad (undefined for the first unit)
    at::Tensor output;  // undefined while the unit is checkpointed
    at::Tensor grad_output;  // between the two halves of a split backward
    models::UnitBatch batch;
  };
  Saved& saved(size_t slot, size_t i);
  bool backward_as_rows(size_t i, Saved& s, const at::Tensor& grad_output);
  at::Tensor output_for_backward(size_t i, Saved& s);
  std::vector<models::UnitPtr> units_;
  std::vector<bool> recompute_;
  std::vector<std::vector<Saved>> saved_;  // [slot][unit]
  UnitHooks* hooks_;
  std::function<void(const char*, size_t)> began_;
  void began(const char* what, size_t i) const {
    if (began_) began_(what, i);
  }
};

// Which units to checkpoint for activation_checkpoint.mode: none | full | selective (every
// `every_nth` transformer block). The embedding and the head are never recomputed.
std::vector<bool> recompute_plan(size_t num_units, const std::string& mode, int64_t every_nth);

}  // namespace troupe::parallel
