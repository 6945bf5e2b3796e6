// Llama 3 as units. Parameter names are torchtitan's ("tok_embeddings.weight",
// "layers.3.attention.wq.weight", "norm.weight", "output.weight"), rotary embeddings use Meta's
// interleaved-pair layout, so checkpoints map one to one onto torchtitan's.
#pragma once
#include <torch/nn/module.h>

#include <functional>
#include <memory>
#include <vector>

#include "models/llama3/model_args.h"
#include "models/unit.h"

namespace troupe::models::llama3 {

// cos/sin of the rotary angles for positions [0, max_seq_len), each [max_seq_len, head_dim/2].
struct RotaryTables {
  at::Tensor cos;
  at::Tensor sin;
};
RotaryTables make_rotary_tables(const ModelArgs& args, const at::TensorOptions& options);

class Llama3Model : public torch::nn::Module {
 public:
  // `options` picks dtype and device; the meta device builds shapes without memory. With
  // `materialize`, the units it rejects (another pipeline stage's) are built on the meta device.
  Llama3Model(const ModelArgs& args, const at::TensorOptions& options,
              const std::function<bool(size_t unit)>& materialize = nullptr);

  const ModelArgs& args() const { return args_; }
  const std::vector<UnitPtr>& units() const { return units_; }

  // Whole-model conveniences (tests, evaluation): logits [batch, seq, vocab] and mean loss.
  at::Tensor logits(const at::Tensor& tokens);
  at::Tensor loss(const UnitBatch& batch);

  // Mixed precision: parameters keep their dtype (fp32 masters), activations use `dtype`.
  void set_compute_dtype(at::ScalarType dtype);

  // activation_checkpoint's "op" policy on every transformer block: the projections keep the
  // tensors the norms' and SwiGLU's outputs are recomputed from, not those outputs.
  void recompute_elementwise(bool on);

  // torchtitan's initialisation; `seed` makes it reproducible. Each unit draws from its own
  // generator (seed, unit), so a unit's values do not depend on which others are materialised.
  void init_weights(uint64_t seed);

 private:
  ModelArgs args_;
  std::vector<UnitPtr> units_;
};

// The head unit's logits without the loss (needed by logits()).
at::Tensor head_logits(Unit& head, const at::Tensor& hidden);

}  // namespace troupe::models::llama3
