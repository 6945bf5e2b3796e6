#include "models/common/decoder_args.h"

#include <cmath>
#include <stdexcept>
#include <string>
#include <utility>

namespace troupe::models {

int64_t DecoderArgs::num_params() const {
  const int64_t qk = qk_nope_head_dim + qk_rope_head_dim;
  const int64_t attention =
      mla() ? (q_lora_rank > 0 ? dim * q_lora_rank + q_lora_rank + q_lora_rank * n_heads * qk : dim * n_heads * qk) +
                  dim * (kv_lora_rank + qk_rope_head_dim) + kv_lora_rank +
                  kv_lora_rank * n_heads * (qk_nope_head_dim + v_head_dim) + n_heads * v_head_dim * dim
            : dim * n_heads * head_dim + 2 * dim * n_kv_heads * head_dim + n_heads * head_dim * dim;
  const int64_t qk_norms = qk_norm ? 2 * head_dim : 0;
  const int64_t ffn = 3 * dim * ffn_hidden_dim;
  const int64_t moe = num_experts * dim + (num_experts + num_shared_experts) * 3 * dim * moe_inter_dim;
  const int64_t block = attention + qk_norms + 2 * dim;
  const int64_t embedding = vocab_size * dim;
  const int64_t output = tie_embeddings ? 0 : vocab_size * dim;
  // A prediction block: a last block's own, two norms and the projection of both halves.
  const int64_t mtp = mtp_layers * (block + (moe_block(n_layers - 1) ? moe : ffn) + 3 * dim + 2 * dim * dim);
  return embedding + n_layers * block + (n_layers - moe_blocks()) * ffn + moe_blocks() * moe + dim + output + mtp;
}

int64_t DecoderArgs::moe_blocks() const {
  int64_t n = 0;
  for (int64_t i = 0; i < n_layers; ++i) n += moe_block(i);
  return n;
}

int64_t DecoderArgs::num_non_embedding_params() const { return num_params() - vocab_size * dim; }

int64_t DecoderArgs::num_active_non_embedding_params() const {
  const int64_t experts_blocks = moe_blocks() + (moe_block(n_layers - 1) ? mtp_layers : 0);
  return num_non_embedding_params() - experts_blocks * (num_experts - top_k) * 3 * dim * moe_inter_dim;
}

double DecoderArgs::flops_per_token(int64_t seq_len) const {
  // Attention's two matmuls per head: q·k over the q/k width, the weights·v over v's.
  const double widths = mla() ? static_cast<double>(qk_nope_head_dim + qk_rope_head_dim + v_head_dim) / 2.0
                              : static_cast<double>(head_dim);
  return 6.0 * static_cast<double>(num_active_non_embedding_params()) +
         12.0 * static_cast<double>(n_layers * n_heads * seq_len) * widths;
}

double DecoderArgs::attention_scale() const {
  const double width = mla() ? static_cast<double>(qk_nope_head_dim + qk_rope_head_dim) : static_cast<double>(head_dim);
  double scale = 1.0 / std::sqrt(width);
  if (rope_yarn_factor > 1) {
    const double m = 0.1 * rope_mscale * std::log(rope_yarn_factor) + 1.0;
    scale *= m * m;
  }
  return scale;
}

void DecoderArgs::validate() const {
  auto require = [](bool ok, const std::string& what) {
    if (!ok) throw std::invalid_argument("model." + what);
  };
  for (const auto& [v, name] : {std::pair{dim, "dim"}, {n_layers, "n_layers"}, {n_heads, "n_heads"}, {n_kv_heads, "n_kv_heads"},
                                {head_dim, "head_dim"}, {ffn_hidden_dim, "ffn_hidden_dim"}, {vocab_size, "vocab_size"}})
    require(v > 0, std::string(name) + " must be positive, got " + std::to_string(v));
  require(head_dim % 2 == 0, "head_dim must be even for rotary embeddings, got " + std::to_string(head_dim));
  if (mla()) {
    require(qk_nope_head_dim > 0 && v_head_dim > 0 && q_lora_rank >= 0,
            "qk_nope_head_dim and v_head_dim must be positive, q_lora_rank not negative, with kv_lora_rank");
    require(qk_rope_head_dim > 0 && qk_rope_head_dim % 2 == 0,
            "qk_rope_head_dim must be even and positive, got " + std::to_string(qk_rope_head_dim));
  }
  require(mtp_layers >= 0 && mtp_loss_weight >= 0, "mtp_layers and mtp_loss_weight must not be negative");
  require(rope_yarn_factor == 0 || (rope_yarn_factor > 1 && rope_beta_fast > rope_beta_slow && rope_beta_slow > 0 &&
                                    rope_original_max_positions > 0),
          "rope_yarn_factor must be 0 (none) or above 1, with rope_beta_fast above rope_beta_slow above 0");
  require(n_heads % n_kv_heads == 0, "n_kv_heads (" + std::to_string(n_kv_heads) + ") must divide n_heads (" +
                                         std::to_string(n_heads) + ")");
  require(norm_eps > 0, "norm_eps must be positive");
  require(rope_theta > 0, "rope_theta must be positive");
  if (num_experts > 0) {
    require(top_k >= 1 && top_k <= num_experts, "top_k must be in 1..num_experts (" + std::to_string(num_experts) +
                                                    "), got " + std::to_string(top_k));
    require(moe_inter_dim > 0, "moe_inter_dim must be positive, got " + std::to_string(moe_inter_dim));
    require(moe_every >= 1, "moe_every must be at least 1, got " + std::to_string(moe_every));
    require(n_dense_layers >= 0, "n_dense_layers must not be negative");
    require(num_shared_experts >= 0, "num_shared_experts must not be negative");
    require(n_expert_groups >= 1 && num_experts % n_expert_groups == 0,
            "n_expert_groups (" + std::to_string(n_expert_groups) + ") must divide num_experts (" +
                std::to_string(num_experts) + ")");
    require(n_limited_groups >= 1 && n_limited_groups <= n_expert_groups,
            "n_limited_groups must be in 1..n_expert_groups, got " + std::to_string(n_limited_groups));
    require(top_k <= n_limited_groups * (num_experts / n_expert_groups),
            "top_k (" + std::to_string(top_k) + ") is more than the experts of n_limited_groups groups");
    require(route_scale > 0, "route_scale must be positive");
    require(load_balance_coeff >= 0 && aux_loss_coeff >= 0, "load_balance_coeff and aux_loss_coeff must not be negative");
  }
  require(rope_scaling_factor == 0 || (rope_scaling_factor > 0 && rope_high_freq_factor > rope_low_freq_factor &&
                                       rope_original_max_positions > 0),
          "rope_scaling_factor must be 0 (none) or positive, with high_freq_factor above low_freq_factor");
}

}  // namespace troupe::models
