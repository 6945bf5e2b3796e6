#include "models/llama3/model_args.h"

#include <map>
#include <stdexcept>

namespace troupe::models::llama3 {

DecoderArgs ModelArgs::decoder() const {
  if (multiple_of <= 0) throw std::invalid_argument("model.multiple_of must be positive, got " + std::to_string(multiple_of));
  if (n_heads <= 0) throw std::invalid_argument("model.n_heads must be positive, got " + std::to_string(n_heads));
  if (head_dim == 0 && dim % n_heads != 0)
    throw std::invalid_argument("model.n_heads (" + std::to_string(n_heads) + ") must divide dim (" +
                                std::to_string(dim) + ") unless head_dim is set");
  DecoderArgs d;
  d.dim = dim;
  d.n_layers = n_layers;
  d.n_heads = n_heads;
  d.n_kv_heads = n_kv_heads > 0 ? n_kv_heads : n_heads;
  d.head_dim = head_dim > 0 ? head_dim : dim / n_heads;
  if (ffn_hidden_dim > 0) {
    d.ffn_hidden_dim = ffn_hidden_dim;
  } else {
    // Meta's recipe: 2/3 of 4*dim (SwiGLU has three matrices), scaled, rounded up to multiple_of.
    int64_t hidden = 2 * (4 * dim) / 3;
    if (ffn_dim_multiplier > 0) hidden = static_cast<int64_t>(ffn_dim_multiplier * static_cast<double>(hidden));
    d.ffn_hidden_dim = multiple_of * ((hidden + multiple_of - 1) / multiple_of);
  }
  d.vocab_size = vocab_size;
  d.norm_eps = norm_eps;
  d.rope_theta = rope_theta;
  d.rope_scaling_factor = rope_scaling_factor;
  d.rope_low_freq_factor = rope_low_freq_factor;
  d.rope_high_freq_factor = rope_high_freq_factor;
  d.rope_original_max_positions = rope_original_max_positions;
  d.tie_embeddings = tie_embeddings;
  d.validate();
  return d;
}

const std::vector<DimensionField<ModelArgs>>& fields() {
  static const std::vector<DimensionField<ModelArgs>> f = {
      {"dim", &ModelArgs::dim},
      {"n_layers", &ModelArgs::n_layers},
      {"n_heads", &ModelArgs::n_heads},
      {"n_kv_heads", &ModelArgs::n_kv_heads},
      {"head_dim", &ModelArgs::head_dim},
      {"vocab_size", &ModelArgs::vocab_size},
      {"multiple_of", &ModelArgs::multiple_of},
      {"ffn_dim_multiplier", &ModelArgs::ffn_dim_multiplier},
      {"ffn_hidden_dim", &ModelArgs::ffn_hidden_dim},
      {"norm_eps", &ModelArgs::norm_eps},
      {"rope_theta", &ModelArgs::rope_theta},
      {"rope_scaling_factor", &ModelArgs::rope_scaling_factor},
      {"rope_low_freq_factor", &ModelArgs::rope_low_freq_factor},
      {"rope_high_freq_factor", &ModelArgs::rope_high_freq_factor},
      {"rope_original_max_positions", &ModelArgs::rope_original_max_positions},
      {"tie_embeddings", &ModelArgs::tie_embeddings},
  };
  return f;
}

const std::vector<std::string>& recorded_keys() {
  static const std::vector<std::string> keys = {
      "dim",        "n_layers",   "n_heads",          "n_kv_heads",          "head_dim",
      "ffn_hidden_dim", "vocab_size", "norm_eps",     "rope_theta",          "rope_scaling_factor",
      "rope_low_freq_factor", "rope_high_freq_factor", "rope_original_max_positions", "tie_embeddings"};
  return keys;
}

namespace {

ModelArgs make(int64_t dim, int64_t layers, int64_t heads, int64_t kv_heads, double ffn_mult, int64_t multiple_of,
               double rope_factor, bool tied, int64_t vocab = 128256) {
  ModelArgs a;
  a.dim = dim;
  a.n_layers = layers;
  a.n_heads = heads;
  a.n_kv_heads = kv_heads;
  a.ffn_dim_multiplier = ffn_mult;
  a.multiple_of = multiple_of;
  a.rope_scaling_factor = rope_factor;
  a.tie_embeddings = tied;
  a.vocab_size = vocab;
  return a;
}

// Published dimensions: Llama 3.2 (1B, 3B: tied embeddings, rope factor 32), Llama 3.1 (8B, 70B,
// 405B: rope factor 8), and torchtitan's debug model sized for a 2048-token tokenizer. Other
// sizes are [model] keys over a flavor (n_layers = 16 cuts 8B to 16 blocks).
const std::vector<std::pair<std::string, ModelArgs>>& registry() {
  static const std::vector<std::pair<std::string, ModelArgs>> flavors = {
      {"debugmodel", make(256, 6, 16, 0, 0, 256, 0, false, 2048)},
      {"1B", make(2048, 16, 32, 8, 1.5, 256, 32.0, true)},
      // The 1B shapes untied: the model of the shared PyTorch peer benchmark (1.50B parameters).
      {"1.5B", make(2048, 16, 32, 8, 1.5, 256, 32.0, false)},
      {"3B", make(3072, 28, 24, 8, 1.0, 256, 32.0, true)},
      {"8B", make(4096, 32, 32, 8, 1.3, 1024, 8.0, false)},
      {"70B", make(8192, 80, 64, 8, 1.3, 4096, 8.0, false)},
      {"405B", make(16384, 126, 128, 8, 1.2, 4096, 8.0, false)},
  };
  return flavors;
}

}  // namespace

ModelArgs flavor(const std::string& name) {
  for (const auto& [n, a] : registry())
    if (n == name) return a;
  std::string known;
  for (const auto& n : flavor_names()) known += (known.empty() ? "" : ", ") + n;
  throw std::invalid_argument("model.flavor: unknown llama3 flavor '" + name + "' (known: " + known + ")");
}

std::vector<std::string> flavor_names() {
  std::vector<std::string> names;
  for (const auto& [n, a] : registry()) names.push_back(n);
  return names;
}

}  // namespace troupe::models::llama3
