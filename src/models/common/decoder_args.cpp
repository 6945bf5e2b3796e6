#include "models/common/decoder_args.h"

#include <stdexcept>
#include <string>
#include <utility>

namespace troupe::models {

int64_t DecoderArgs::num_params() const {
  const int64_t attention = dim * n_heads * head_dim + 2 * dim * n_kv_heads * head_dim + n_heads * head_dim * dim;
  const int64_t qk_norms = qk_norm ? 2 * head_dim : 0;
  const int64_t ffn = 3 * dim * ffn_hidden_dim;
  const int64_t block = attention + qk_norms + ffn + 2 * dim;
  const int64_t embedding = vocab_size * dim;
  const int64_t output = tie_embeddings ? 0 : vocab_size * dim;
  return embedding + n_layers * block + dim + output;
}

int64_t DecoderArgs::num_non_embedding_params() const { return num_params() - vocab_size * dim; }

double DecoderArgs::flops_per_token(int64_t seq_len) const {
  return 6.0 * static_cast<double>(num_non_embedding_params()) +
         12.0 * static_cast<double>(n_layers * n_heads * head_dim * seq_len);
}

void DecoderArgs::validate() const {
  auto require = [](bool ok, const std::string& what) {
    if (!ok) throw std::invalid_argument("model." + what);
  };
  for (const auto& [v, name] : {std::pair{dim, "dim"}, {n_layers, "n_layers"}, {n_heads, "n_heads"}, {n_kv_heads, "n_kv_heads"},
                                {head_dim, "head_dim"}, {ffn_hidden_dim, "ffn_hidden_dim"}, {vocab_size, "vocab_size"}})
    require(v > 0, std::string(name) + " must be positive, got " + std::to_string(v));
  require(head_dim % 2 == 0, "head_dim must be even for rotary embeddings, got " + std::to_string(head_dim));
  require(n_heads % n_kv_heads == 0, "n_kv_heads (" + std::to_string(n_kv_heads) + ") must divide n_heads (" +
                                         std::to_string(n_heads) + ")");
  require(norm_eps > 0, "norm_eps must be positive");
  require(rope_theta > 0, "rope_theta must be positive");
  require(rope_scaling_factor == 0 || (rope_scaling_factor > 0 && rope_high_freq_factor > rope_low_freq_factor &&
                                       rope_original_max_positions > 0),
          "rope_scaling_factor must be 0 (none) or positive, with high_freq_factor above low_freq_factor");
}

}  // namespace troupe::models
