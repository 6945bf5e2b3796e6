// A model is a sequence of units (DESIGN §3): token embedding, each transformer block, and the
// head (final norm + output projection + loss). Stage actors run units one at a time.
#pragma once
#include <torch/nn/module.h>

#include <memory>
#include <vector>

namespace troupe::models {

// What a unit may read besides its predecessor's activation: the first unit reads tokens, the
// last reads targets.
struct UnitBatch {
  at::Tensor tokens;   // [batch, seq] int64
  at::Tensor targets;  // [batch, seq] int64
};

class Unit : public torch::nn::Module {
 public:
  // `x` is the previous unit's output (undefined for the first unit). The last unit returns
  // the scalar loss.
  virtual at::Tensor forward(const at::Tensor& x, const UnitBatch& batch) = 0;
  // The table whose rows this unit's output is (output = table[batch.tokens], in the compute
  // dtype), or undefined. The table's gradient is then those rows' gradients added up by token,
  // which data parallelism may send as rows rather than as the whole table.
  virtual at::Tensor lookup_table() const { return {}; }
};

using UnitPtr = std::shared_ptr<Unit>;

}  // namespace troupe::models
