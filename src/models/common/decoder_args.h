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
  // Multi-head latent attention (DeepSeek V2/V3) when kv_lora_rank > 0: k and v from a shared
  // low-rank latent (and q from one when q_lora_rank > 0), each head's q and k a part without
  // position (qk_nope_head_dim) and a rotary part (qk_rope_head_dim, k's shared by the heads),
  // values of v_head_dim. head_dim and n_kv_heads are then unused.
  int64_t q_lora_rank = 0;
  int64_t kv_lora_rank = 0;
  int64_t qk_nope_head_dim = 0;
  int64_t qk_rope_head_dim = 0;
  int64_t v_head_dim = 0;
  // YaRN (rope_yarn_factor > 1): the rotary frequencies between the beta_fast and beta_slow
  // rotations over rope_original_max_positions blend towards theirs divided by the factor, and
  // the attention's scale grows by (0.1 rope_mscale ln(factor) + 1)^2.
  double rope_yarn_factor = 0;
  double rope_beta_fast = 32;
  double rope_beta_slow = 1;
  double rope_mscale = 1.0;
  // Multi-token prediction (DeepSeek V3): mtp_layers blocks after the last, block k predicting the
  // token k + 2 ahead from block k - 1's output (the last block's for k = 1) and the embedding of
  // the token k ahead; the loss adds mtp_loss_weight times their mean cross-entropy.
  int64_t mtp_layers = 0;
  double mtp_loss_weight = 0.3;
  bool mla() const { return kv_lora_rank > 0; }
  int64_t rotary_dim() const { return mla() ? qk_rope_head_dim : head_dim; }
  double attention_scale() const;
  bool tie_embeddings = false;
  // The family's longest sequence (not a dimension: no weight depends on it). Llama 3.1's 128K
  // context, torchtitan's max_seq_len; Qwen3's max_position_embeddings.
  int64_t max_seq_len = 131072;

  // Mixture of experts in place of the feed-forward (torchtitan's MoE; num_experts 0: every block
  // dense). Block i is a MoE block when i >= n_dense_layers and (i + 1) % moe_every == 0 (Qwen3's
  // decoder_sparse_step); the others keep the dense feed-forward of ffn_hidden_dim.
  int64_t num_experts = 0;
  int64_t top_k = 0;             // routed experts per token
  int64_t moe_inter_dim = 0;     // each expert's hidden width
  int64_t num_shared_experts = 0;  // always-on experts of moe_inter_dim each, as one feed-forward
  int64_t n_dense_layers = 0;
  int64_t moe_every = 1;
  bool sigmoid_scores = false;   // the router's scores: softmax over experts (false) or sigmoid
  bool route_norm = false;       // the top-k scores divided by their sum
  double route_scale = 1.0;
  // Group-limited routing: experts in n_expert_groups groups, tokens choose among the
  // n_limited_groups best (a group's score: the sum of its best two experts').
  int64_t n_expert_groups = 1;
  int64_t n_limited_groups = 1;
  // Auxiliary-loss-free balancing: after each step every expert's bias moves by this much towards
  // the mean load, the moves centred on zero (0: no bias).
  double load_balance_coeff = 0;
  // The load-balancing loss (Switch / Qwen3 MoE), mean over the MoE blocks, times this; over each
  // micro-batch's tokens, or per sequence and averaged (DeepSeek V3's sequence-wise form).
  double aux_loss_coeff = 0;
  bool aux_loss_per_sequence = false;

  bool moe_block(int64_t layer) const {
    return num_experts > 0 && layer >= n_dense_layers && (layer + 1) % moe_every == 0;
  }
  int64_t moe_blocks() const;

  int64_t num_params() const;                // every parameter, tied ones once
  int64_t num_non_embedding_params() const;  // torchtitan's N for MFU: minus the token embedding
  // The parameters one token computes with: all but the routed experts it does not choose.
  int64_t num_active_non_embedding_params() const;
  // torchtitan's: 6 N + 12 layers x heads x head_dim x seq_len (attention's two matmuls), N the
  // active parameters.
  double flops_per_token(int64_t seq_len) const;
  void validate() const;  // std::invalid_argument naming the bad dimension
};

}  // namespace troupe::models
