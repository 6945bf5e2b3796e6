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
};

using UnitPtr = std::shared_ptr<Unit>;

}  // namespace troupe::models
