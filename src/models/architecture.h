// A model family's description of one model (its dimensions), and the spec a family registers
// (DESIGN §4): flavors, how a configuration becomes dimensions, how to build the model plain,
// its FLOPs, and its Hugging Face mapping. Nothing outside src/models/ names a family; the
// layers above hold an Architecture and ask it.
#pragma once
#include <c10/core/TensorOptions.h>
#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "checkpoint/safetensors.h"

namespace troupe::models {

class Model;

// Dimension keys and values as config text ("n_layers" = "16"), in the family's order.
using Dimensions = std::vector<std::pair<std::string, std::string>>;

// A model's own sharding plan (DESIGN §4): what tensor, sequence and expert parallelism do to
// its parameters, declared by the family and applied by parallel/parallelize.h over the mesh.
struct ShardingPlan {
  // Tensor parallelism: a parameter whose name ends with `suffix` is split along tensor
  // dimension `dim` over the tp ranks (dim 0 of a projection's weight: torchtitan's
  // ColwiseParallel, and the vocabulary of the embedding and the output; dim 1: RowwiseParallel).
  // Parameters no rule names stay whole on every tp rank (the norms).
  struct TensorSplit {
    std::string suffix;
    int64_t dim;
    // 0: one part per tp rank. Otherwise at most this many parts: with more tp ranks than that,
    // each part is held alike by tp / parts consecutive ranks (k and v of fewer kv heads than
    // ranks), and their gradients are summed over those ranks.
    int64_t max_parts = 0;
  };
  std::vector<TensorSplit> tensor_parallel;
  // Expert parallelism: parameters of routed experts, split over ep by their leading (expert)
  // dimension. None in a dense model.
  std::vector<std::string> experts;
};

class Architecture {
 public:
  virtual ~Architecture() = default;
  virtual std::string family() const = 0;
  // Every dimension of the model: enough to rebuild it exactly (with the family's configure).
  virtual Dimensions dimensions() const = 0;

  // What the layers above need without building the model.
  virtual int64_t hidden_dim() const = 0;  // activations between units: [batch, seq, hidden_dim]
  virtual int64_t n_blocks() const = 0;     // units between the embedding and the head
  virtual int64_t vocab_size() const = 0;
  // The longest sequence the model is made for (its trained positions); training.seq_len above
  // it is refused.
  virtual int64_t max_seq_len() const = 0;
  virtual bool tie_embeddings() const = 0;
  virtual int64_t num_params() const = 0;                // every parameter, tied ones once
  virtual int64_t num_non_embedding_params() const = 0;  // torchtitan's N for MFU
  // Training FLOPs per token at this sequence length (torchtitan's formula: 6N + attention).
  virtual double flops_per_token(int64_t seq_len) const = 0;
  virtual ShardingPlan sharding_plan() const = 0;
  // Why the model cannot be split over `tp` tensor-parallel ranks (a message naming
  // parallelism.tensor_parallel_degree and the dimension), or empty.
  virtual std::string tensor_parallel_problem(int64_t tp) const {
    return tp > 1 ? "parallelism.tensor_parallel_degree: " + family() + " has no tensor-parallel plan" : "";
  }
  // Why the model cannot attend over `cp` context-parallel ranks (naming
  // parallelism.context_parallel_degree), or empty.
  virtual std::string context_parallel_problem(int64_t cp) const {
    return cp > 1 ? "parallelism.context_parallel_degree: " + family() + " has no context-parallel attention" : "";
  }

  // Why the routed experts cannot be split over `ep` expert-parallel ranks (naming
  // parallelism.expert_parallel_degree), or empty.
  virtual std::string expert_parallel_problem(int64_t ep) const {
    return ep > 1 ? "parallelism.expert_parallel_degree: " + family() + " has no routed experts" : "";
  }

  // The plain model: unsharded shapes, as units. `options` picks dtype and device (meta builds
  // shapes without memory); units `materialize` rejects (another pipeline stage's) are built on
  // the meta device. Rotary tables cover positions [0, max_seq_len).
  virtual std::shared_ptr<Model> build(const at::TensorOptions& options, int64_t max_seq_len,
                                       const std::function<bool(size_t unit)>& materialize = nullptr) const = 0;

  // Hugging Face: the class name, config.json (`torch_dtype` of the weights), and the weights'
  // names both ways (std::runtime_error naming a missing, unexpected or misshapen tensor).
  virtual std::string hf_class() const = 0;
  virtual nlohmann::json hf_config(const std::string& torch_dtype, int64_t max_seq_len) const = 0;
  virtual checkpoint::TensorMap to_hf(const checkpoint::TensorMap& native) const = 0;
  virtual checkpoint::TensorMap from_hf(const checkpoint::TensorMap& hf) const = 0;
};

using ArchitecturePtr = std::shared_ptr<const Architecture>;

struct ModelSpec {
  std::string name;                  // model.name
  std::vector<std::string> flavors;  // model.flavor
  std::string hf_model_type;         // config.json's model_type
  // A flavor's dimensions with `overrides` applied (the family's own keys). Throws
  // std::invalid_argument naming the key ("model.n_layers ...") or the flavor.
  std::function<ArchitecturePtr(const std::string& flavor, const Dimensions& overrides)> configure;
  // The model a Hugging Face config.json describes; throws naming `path` and the field.
  std::function<ArchitecturePtr(const nlohmann::json& config, const std::string& path)> from_hf_config;
};

}  // namespace troupe::models
