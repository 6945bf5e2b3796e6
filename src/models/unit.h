// A model is a sequence of units (DESIGN §3): token embedding, each transformer block, and the
// head (final norm + output projection + loss). Stage actors run units one at a time.
#pragma once
#include <torch/nn/module.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "kernels/attention.h"
#include "kernels/dense_block_attention.h"

namespace troupe::models {

// A step's side channel: named values units report beside their outputs (a mixture of
// experts' load per expert, its auxiliary loss), added up over the micro-batches and units
// that report them. The executor hands it to a unit's first forward only, so a recomputed
// forward does not report twice.
class AuxValues {
 public:
  void add(const std::string& name, const at::Tensor& value) {
    auto& sum = values_[name];
    sum = sum.defined() ? sum + value.detach() : value.detach().clone();
  }
  const std::map<std::string, at::Tensor>& values() const { return values_; }
  void clear() { values_.clear(); }

 private:
  std::map<std::string, at::Tensor> values_;
};

// What a unit may read besides its predecessor's activation: the first unit reads tokens, the
// last reads targets.
struct UnitBatch {
  at::Tensor tokens;   // [batch, seq] int64
  at::Tensor targets;  // [batch, seq] int64
  // [seq] int64: each token's position in its sequence (context parallelism gives a rank a
  // slice of each sequence); undefined: 0 .. seq-1.
  at::Tensor positions;
  AuxValues* aux = nullptr;  // where units report auxiliary values; null: nowhere
  // What the backward multiplies this micro-batch's loss by (1 / micro-batches per step): an
  // auxiliary loss a unit adds to the backward is scaled alike.
  double loss_scale = 1.0;
  // training.attention_mask = "block_causal": [batch, seq] int64, each token's document within
  // its row, and a token attends only to its own document's earlier tokens. Undefined
  // ("causal"): to every earlier token of its row.
  at::Tensor documents;
  // Context parallelism: the whole sequence's positions [seq x cp] and documents [batch, seq x
  // cp] in the order the cp ranks' parts are gathered (rank-major): whom the keys other ranks
  // hold belong to. Undefined without it.
  at::Tensor all_positions, all_documents;
  // On CUDA, where the mask is not plain causal over the row (documents, or context
  // parallelism): the mask as segments for flash attention, on the device. One, over the keys
  // the attention sees (its own, or the cp group's gathered); under the ring method one per
  // rank whose block of keys it sees, by rank.
  std::vector<kernels::AttentionSegments> attention_segments;
  // On CUDA, context parallelism's allgather under plain causal masking: this rank's queries as
  // runs of consecutive positions, and the gathered keys' order by position (int64, on the
  // device), for cuDNN's dense blocks (kernels::dense_block_attention). Empty: not taken.
  std::vector<kernels::QueryRun> query_runs;
  at::Tensor key_order;
  // Context parallelism: the whole rows' tokens and targets [batch, seq x cp], in order (what a
  // prediction block reads ahead of this rank's positions), and this rank's positions on the host.
  at::Tensor all_tokens, all_targets, host_positions;
  // Multi-token prediction's blocks under tensor or context parallelism keep the sequence's
  // length (its parts stay equal) and score only these of each row's positions (int64, on the
  // device; a MoE block routes only their tokens). Undefined: every position.
  at::Tensor scored_rows;
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
