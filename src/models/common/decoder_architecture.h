// What Llama 3 and Qwen3 share as an Architecture: everything that follows from DecoderArgs.
// A family adds its name, its dimension keys and its Hugging Face config.
#pragma once
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "models/architecture.h"
#include "models/common/decoder_args.h"
#include "models/common/dimension_fields.h"
#include "models/common/hf_decoder.h"

namespace troupe::models {

// Every DecoderArgs field by its key; a family lists the ones that are its dimensions.
std::vector<DimensionField<DecoderArgs>> decoder_fields(const std::vector<std::string>& keys);

class DecoderArchitecture : public Architecture {
 public:
  explicit DecoderArchitecture(const DecoderArgs& args);
  const DecoderArgs& args() const { return args_; }

  int64_t hidden_dim() const override { return args_.dim; }
  int64_t n_blocks() const override { return args_.n_layers; }
  int64_t max_seq_len() const override { return args_.max_seq_len; }
  int64_t vocab_size() const override { return args_.vocab_size; }
  bool tie_embeddings() const override { return args_.tie_embeddings; }
  int64_t num_params() const override { return args_.num_params(); }
  int64_t num_non_embedding_params() const override { return args_.num_non_embedding_params(); }
  double flops_per_token(int64_t seq_len) const override { return args_.flops_per_token(seq_len); }
  // torchtitan's plan for Llama and Qwen3: q, k, v, w1, w3 and the output column-wise, wo and w2
  // row-wise, the embedding by vocabulary rows; the norms (q/k norms too) whole.
  ShardingPlan sharding_plan() const override;
  std::string tensor_parallel_problem(int64_t tp) const override;
  std::string context_parallel_problem(int64_t cp) const override;
  std::string expert_parallel_problem(int64_t ep) const override;
  std::shared_ptr<Model> build(const at::TensorOptions& options, int64_t max_seq_len,
                               const std::function<bool(size_t)>& materialize) const override;
  checkpoint::TensorMap to_hf(const checkpoint::TensorMap& native) const override;
  checkpoint::TensorMap from_hf(const checkpoint::TensorMap& hf) const override;

 private:
  DecoderArgs args_;
};

// A family's flavors, by name, in the order `troupe models` lists them.
using DecoderFlavors = std::vector<std::pair<std::string, DecoderArgs>>;
std::vector<std::string> flavor_names(const DecoderFlavors& flavors);

// `flavor` of `family` with the `overrides` of its dimension `keys` applied, made an `Arch`;
// std::invalid_argument naming the key, or the flavor and the known ones.
template <class Arch>
ArchitecturePtr configure_decoder(const DecoderFlavors& flavors, const std::string& family,
                                  const std::vector<std::string>& keys, const std::string& flavor,
                                  const Dimensions& overrides) {
  for (const auto& [name, a] : flavors) {
    if (name != flavor) continue;
    auto args = a;
    apply_dimensions(args, decoder_fields(keys), overrides, family);
    return std::make_shared<Arch>(args);
  }
  std::string known;
  for (const auto& n : flavor_names(flavors)) known += (known.empty() ? "" : ", ") + n;
  throw std::invalid_argument("model.flavor: unknown " + family + " flavor '" + flavor + "' (known: " + known + ")");
}

// The model a Hugging Face config.json of `model_type` describes: `base` (the family's fixed
// choices, such as Qwen3's q/k norms) with config.json's sizes read over it, made an `Arch`.
// Throws naming `path` and the field; `check` may refuse what the family does not support.
template <class Arch>
ArchitecturePtr decoder_from_hf_config(const nlohmann::json& config, const std::string& path,
                                       const std::string& model_type, DecoderArgs base,
                                       const std::function<void(const HfConfigReader&, const DecoderArgs&)>& check = {}) {
  const HfConfigReader r(config, path);
  if (r.text("model_type") != model_type) r.fail("model_type is '" + r.text("model_type") + "', not '" + model_type + "'");
  r.decoder(base);
  if (check) check(r, base);
  try {
    return std::make_shared<Arch>(base);
  } catch (const std::invalid_argument& e) {
    r.fail(e.what());
  }
}

}  // namespace troupe::models
