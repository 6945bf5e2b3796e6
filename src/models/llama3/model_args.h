// Llama 3 / 3.1 / 3.2 hyper-parameters and the registry of published flavors.
// Plain data, no libtorch: configs, parameter counts and FLOP estimates need no tensors.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace troupe::models::llama3 {

// Llama 3.1's wavelength-dependent scaling of the rotary frequencies.
struct RopeScaling {
  double factor = 8.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
};

struct ModelArgs {
  int64_t dim = 4096;
  int64_t n_layers = 32;
  int64_t n_heads = 32;
  int64_t n_kv_heads = 0;  // 0: same as n_heads (no grouped-query attention)
  int64_t vocab_size = 128256;
  int64_t multiple_of = 256;
  std::optional<double> ffn_dim_multiplier;
  double norm_eps = 1e-5;
  double rope_theta = 500000.0;
  std::optional<RopeScaling> rope_scaling;
  int64_t max_seq_len = 2048;
  bool tie_embeddings = false;

  int64_t kv_heads() const { return n_kv_heads > 0 ? n_kv_heads : n_heads; }
  int64_t head_dim() const { return dim / n_heads; }
  int64_t ffn_hidden_dim() const;
  int64_t num_params() const;                // every parameter, tied ones once
  int64_t num_non_embedding_params() const;  // torchtitan's N for MFU: minus the token embedding
  void validate() const;                     // std::invalid_argument naming the bad field
};

ModelArgs flavor(const std::string& name);  // std::invalid_argument listing known flavors
std::vector<std::string> flavor_names();

}  // namespace troupe::models::llama3
