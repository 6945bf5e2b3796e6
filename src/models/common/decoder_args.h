// The dimensions of a pre-norm decoder-only transformer with grouped-query attention, rotary
// embeddings and a SwiGLU feed-forward: Llama 3 and Qwen3 are both this, differing in flavors,
// in how their own keys give these numbers, and in Qwen3's norm on each head's q and k.
// Plain data, no libtorch.
#pragma once
#include <cstdint>

namespace troupe::models {

struct DecoderArgs {
  int64_t dim = 4096;
  int64_t n_layers = 32;
  int64_t n_heads = 32;
  int64_t n_kv_heads = 32;
  int64_t head_dim = 128;
  int64_t ffn_hidden_dim = 14336;
  int64_t vocab_size = 128256;
  double norm_eps = 1e-5;
  double rope_theta = 500000.0;
  // Llama 3.1's wavelength-dependent scaling of the rotary frequencies; factor 0: none.
  double rope_scaling_factor = 0;
  double rope_low_freq_factor = 1.0;
  double rope_high_freq_factor = 4.0;
  int64_t rope_original_max_positions = 8192;
  bool qk_norm = false;  // RMSNorm over each head's q and k before the rotary embedding (Qwen3)
  bool tie_embeddings = false;
  // The family's longest sequence (not a dimension: no weight depends on it). Llama 3.1's 128K
  // context, torchtitan's max_seq_len; Qwen3's max_position_embeddings.
  int64_t max_seq_len = 131072;

  int64_t num_params() const;                // every parameter, tied ones once
  int64_t num_non_embedding_params() const;  // torchtitan's N for MFU: minus the token embedding
  // torchtitan's: 6 N + 12 layers x heads x head_dim x seq_len (attention's two matmuls).
  double flops_per_token(int64_t seq_len) const;
  void validate() const;  // std::invalid_argument naming the bad dimension
};

}  // namespace troupe::models
