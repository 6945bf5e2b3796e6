#include "models/common/decoder_architecture.h"

#include "models/common/decoder.h"
#include "models/common/hf_decoder.h"

namespace troupe::models {

std::vector<DimensionField<DecoderArgs>> decoder_fields(const std::vector<std::string>& keys) {
  static const std::vector<DimensionField<DecoderArgs>> all = {
      {"dim", &DecoderArgs::dim},
      {"n_layers", &DecoderArgs::n_layers},
      {"n_heads", &DecoderArgs::n_heads},
      {"n_kv_heads", &DecoderArgs::n_kv_heads},
      {"head_dim", &DecoderArgs::head_dim},
      {"ffn_hidden_dim", &DecoderArgs::ffn_hidden_dim},
      {"vocab_size", &DecoderArgs::vocab_size},
      {"norm_eps", &DecoderArgs::norm_eps},
      {"rope_theta", &DecoderArgs::rope_theta},
      {"rope_scaling_factor", &DecoderArgs::rope_scaling_factor},
      {"rope_low_freq_factor", &DecoderArgs::rope_low_freq_factor},
      {"rope_high_freq_factor", &DecoderArgs::rope_high_freq_factor},
      {"rope_original_max_positions", &DecoderArgs::rope_original_max_positions},
      {"qk_norm", &DecoderArgs::qk_norm},
      {"tie_embeddings", &DecoderArgs::tie_embeddings},
      {"q_lora_rank", &DecoderArgs::q_lora_rank},
      {"kv_lora_rank", &DecoderArgs::kv_lora_rank},
      {"qk_nope_head_dim", &DecoderArgs::qk_nope_head_dim},
      {"qk_rope_head_dim", &DecoderArgs::qk_rope_head_dim},
      {"v_head_dim", &DecoderArgs::v_head_dim},
      {"rope_yarn_factor", &DecoderArgs::rope_yarn_factor},
      {"rope_beta_fast", &DecoderArgs::rope_beta_fast},
      {"rope_beta_slow", &DecoderArgs::rope_beta_slow},
      {"rope_mscale", &DecoderArgs::rope_mscale},
      {"mtp_layers", &DecoderArgs::mtp_layers},
      {"mtp_loss_weight", &DecoderArgs::mtp_loss_weight},
      {"num_experts", &DecoderArgs::num_experts},
      {"top_k", &DecoderArgs::top_k},
      {"moe_inter_dim", &DecoderArgs::moe_inter_dim},
      {"num_shared_experts", &DecoderArgs::num_shared_experts},
      {"n_dense_layers", &DecoderArgs::n_dense_layers},
      {"moe_every", &DecoderArgs::moe_every},
      {"sigmoid_scores", &DecoderArgs::sigmoid_scores},
      {"route_norm", &DecoderArgs::route_norm},
      {"route_scale", &DecoderArgs::route_scale},
      {"n_expert_groups", &DecoderArgs::n_expert_groups},
      {"n_limited_groups", &DecoderArgs::n_limited_groups},
      {"load_balance_coeff", &DecoderArgs::load_balance_coeff},
      {"aux_loss_coeff", &DecoderArgs::aux_loss_coeff},
      {"aux_loss_per_sequence", &DecoderArgs::aux_loss_per_sequence},
  };
  std::vector<DimensionField<DecoderArgs>> out;
  for (const auto& k : keys)
    for (const auto& f : all)
      if (k == f.name) out.push_back(f);
  return out;
}

std::vector<std::string> flavor_names(const DecoderFlavors& flavors) {
  std::vector<std::string> names;
  for (const auto& [name, args] : flavors) names.push_back(name);
  return names;
}

DecoderArchitecture::DecoderArchitecture(const DecoderArgs& args) : args_(args) { args_.validate(); }

ShardingPlan DecoderArchitecture::sharding_plan() const {
  ShardingPlan plan;
  // Latent attention: wq (or wq_b) and wkv_b by heads, as wq; its latents' projections whole.
  for (const char* colwise : {"attention.wq.weight", "attention.wq_b.weight", "attention.wkv_b.weight",
                              "feed_forward.w1.weight", "feed_forward.w3.weight", "tok_embeddings.weight",
                              "output.weight"})
    plan.tensor_parallel.push_back({colwise, 0});
  // Fewer kv heads than tp ranks: each kv head on the ranks whose q heads it serves.
  for (const char* kv : {"attention.wk.weight", "attention.wv.weight"})
    plan.tensor_parallel.push_back({kv, 0, args_.n_kv_heads});
  for (const char* rowwise : {"attention.wo.weight", "feed_forward.w2.weight"}) plan.tensor_parallel.push_back({rowwise, 1});
  if (args_.num_experts > 0) {
    // Shared experts as a feed-forward; routed ones split along their hidden width (torchtitan's
    // expert-tensor split), and over ep by their leading (expert) dimension.
    for (const char* colwise : {"moe.shared_experts.w1.weight", "moe.shared_experts.w3.weight"})
      plan.tensor_parallel.push_back({colwise, 0});
    plan.tensor_parallel.push_back({"moe.shared_experts.w2.weight", 1});
    plan.tensor_parallel.push_back({"moe.experts.w1", 1});
    plan.tensor_parallel.push_back({"moe.experts.w3", 1});
    plan.tensor_parallel.push_back({"moe.experts.w2", 2});
    plan.experts = {"moe.experts.w1", "moe.experts.w2", "moe.experts.w3"};
  }
  return plan;
}

std::string DecoderArchitecture::tensor_parallel_problem(int64_t tp) const {
  return models::tensor_parallel_problem(args_, tp);
}

std::string DecoderArchitecture::context_parallel_problem(int64_t) const { return {}; }

std::string DecoderArchitecture::expert_parallel_problem(int64_t ep) const {
  return models::expert_parallel_problem(args_, ep);
}

std::shared_ptr<Model> DecoderArchitecture::build(const at::TensorOptions& options, int64_t max_seq_len,
                                                  const std::function<bool(size_t)>& materialize) const {
  return std::make_shared<DecoderModel>(args_, options, max_seq_len, materialize);
}

checkpoint::TensorMap DecoderArchitecture::to_hf(const checkpoint::TensorMap& native) const {
  return decoder_to_hf(native, args_);
}

checkpoint::TensorMap DecoderArchitecture::from_hf(const checkpoint::TensorMap& hf) const {
  return decoder_from_hf(hf, args_);
}

}  // namespace troupe::models
