// Hugging Face's decoder checkpoints (LlamaForCausalLM, Qwen3ForCausalLM) <-> torchtitan's names.
// HF stores the rows of q and k (and Qwen3's q_norm and k_norm weights) with each head's rotary
// pairs split into halves (rotate_half) where Meta/torchtitan interleave them, so those are
// permuted on the way. Also what both families' config.json share.
#pragma once
#include <nlohmann/json.hpp>

#include <optional>
#include <string>

#include "checkpoint/safetensors.h"
#include "models/common/decoder_args.h"

namespace troupe::models {

// Throws std::runtime_error naming a missing, unexpected or wrongly shaped tensor.
checkpoint::TensorMap decoder_from_hf(const checkpoint::TensorMap& hf, const DecoderArgs& args);
checkpoint::TensorMap decoder_to_hf(const checkpoint::TensorMap& native, const DecoderArgs& args);

// config.json's fields that LlamaConfig and Qwen3Config share (sizes, norms, rotary, tying).
nlohmann::json decoder_hf_config(const DecoderArgs& args, const std::string& torch_dtype, int64_t max_positions);

// Reads a config.json's fields, each throwing std::runtime_error naming the file and the field
// when it is missing or not of its type.
class HfConfigReader {
 public:
  HfConfigReader(const nlohmann::json& config, std::string path) : c_(config), path_(std::move(path)) {}
  int64_t integer(const char* field, std::optional<int64_t> fallback = std::nullopt) const;
  double number(const char* field, std::optional<double> fallback = std::nullopt) const;
  bool flag(const char* field, bool fallback) const;
  std::string text(const char* field) const;
  // rope_parameters (transformers 5) or rope_theta + rope_scaling (earlier): theta and, for
  // "llama3" scaling, its factors. Other scalings are refused by name.
  void rope(DecoderArgs& a) const;
  // The fields both families share, read into `a`.
  void decoder(DecoderArgs& a) const;
  [[noreturn]] void fail(const std::string& what) const;

 private:
  const nlohmann::json& c_;
  std::string path_;
};

}  // namespace troupe::models
