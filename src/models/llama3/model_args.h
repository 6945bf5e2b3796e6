// Llama 3 / 3.1 / 3.2 hyper-parameters as Meta writes them, and the published flavors.
// Plain data, no libtorch: configs, parameter counts and FLOP estimates need no tensors.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "models/common/decoder_args.h"
#include "models/common/dimension_fields.h"

namespace troupe::models::llama3 {

// The keys of [model] for llama3. Zero means "derived": n_kv_heads = n_heads,
// head_dim = dim / n_heads, ffn_hidden_dim from Meta's recipe (2/3 of 4 dim, times
// ffn_dim_multiplier if set, rounded up to multiple_of), rope_scaling_factor 0 = no scaling.
struct ModelArgs {
  int64_t dim = 4096;
  int64_t n_layers = 32;
  int64_t n_heads = 32;
  int64_t n_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t vocab_size = 128256;
  int64_t multiple_of = 256;
  double ffn_dim_multiplier = 0;
  int64_t ffn_hidden_dim = 0;
  double norm_eps = 1e-5;
  double rope_theta = 500000.0;
  double rope_scaling_factor = 0;
  double rope_low_freq_factor = 1.0;
  double rope_high_freq_factor = 4.0;
  int64_t rope_original_max_positions = 8192;
  bool tie_embeddings = false;

  // The decoder these give; std::invalid_argument naming a bad key.
  DecoderArgs decoder() const;
};

const std::vector<DimensionField<ModelArgs>>& fields();
// The keys a resolved model is recorded by (no zeros left to derive).
const std::vector<std::string>& recorded_keys();

ModelArgs flavor(const std::string& name);  // std::invalid_argument listing known flavors
std::vector<std::string> flavor_names();

}  // namespace troupe::models::llama3
