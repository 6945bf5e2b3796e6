#include "models/deepseek_v3/spec.h"

#include <algorithm>
#include <stdexcept>
#include <vector>

#include "models/common/decoder_architecture.h"
#include "models/common/hf_decoder.h"

namespace troupe::models::deepseek_v3 {

namespace {

const std::vector<std::string>& keys() {
  static const std::vector<std::string> k = {
      "dim",              "n_layers",         "n_heads",         "ffn_hidden_dim",    "vocab_size",
      "norm_eps",         "rope_theta",       "tie_embeddings",  "q_lora_rank",       "kv_lora_rank",
      "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim",      "rope_yarn_factor",  "rope_original_max_positions",
      "rope_beta_fast",   "rope_beta_slow",   "rope_mscale",     "num_experts",       "top_k",
      "moe_inter_dim",    "num_shared_experts", "n_dense_layers", "sigmoid_scores",   "route_norm",
      "route_scale",      "n_expert_groups",  "n_limited_groups", "load_balance_coeff", "aux_loss_coeff",
      "mtp_layers",       "mtp_loss_weight",  "aux_loss_per_sequence"};
  return k;
}

struct Sizes {
  int64_t vocab, dim, inter, moe_inter, layers, dense, heads, experts, shared, top_k;
  bool sigmoid, route_norm;
  double route_scale;
  int64_t groups, limited, q_lora;
  double mscale;
};

// The attention's widths follow from the others: every head of q/k is nope + rope wide.
DecoderArgs finish(DecoderArgs a) {
  a.n_kv_heads = a.n_heads;
  a.head_dim = a.qk_nope_head_dim + a.qk_rope_head_dim;
  return a;
}

DecoderArgs make(const Sizes& s) {
  DecoderArgs a;
  a.vocab_size = s.vocab;
  a.dim = s.dim;
  a.ffn_hidden_dim = s.inter;
  a.moe_inter_dim = s.moe_inter;
  a.n_layers = s.layers;
  a.n_dense_layers = s.dense;
  a.n_heads = s.heads;
  a.num_experts = s.experts;
  a.num_shared_experts = s.shared;
  a.top_k = s.top_k;
  a.sigmoid_scores = s.sigmoid;
  a.route_norm = s.route_norm;
  a.route_scale = s.route_scale;
  a.n_expert_groups = s.groups;
  a.n_limited_groups = s.limited;
  a.q_lora_rank = s.q_lora;
  a.kv_lora_rank = 512;
  a.qk_nope_head_dim = 128;
  a.qk_rope_head_dim = 64;
  a.v_head_dim = 128;
  a.rope_theta = 10000.0;
  a.rope_yarn_factor = 40.0;
  a.rope_original_max_positions = 4096;
  a.rope_beta_fast = 32;
  a.rope_beta_slow = 1;
  a.rope_mscale = s.mscale;
  a.load_balance_coeff = 1e-3;
  a.norm_eps = 1e-5;
  a.max_seq_len = 163840;  // the original 4096 positions times the YaRN factor
  return finish(a);
}

// torchtitan's flavors (its deepseekv3_configs).
const DecoderFlavors& registry() {
  static const DecoderFlavors flavors = {
      {"debugmodel", make({2048, 256, 1024, 256, 6, 1, 16, 8, 2, 3, false, false, 1.0, 1, 1, 0, 0.70})},
      {"16B", make({102400, 2048, 10944, 1408, 27, 1, 16, 64, 2, 6, false, false, 1.0, 1, 1, 0, 0.70})},
      {"236B", make({102400, 5120, 12288, 1536, 60, 1, 128, 160, 2, 6, false, false, 16.0, 8, 3, 1536, 1.0})},
      {"671B", make({129280, 7168, 18432, 2048, 61, 3, 128, 256, 1, 8, true, true, 2.5, 8, 4, 1536, 1.0})},
  };
  return flavors;
}

class DeepSeekV3 : public DecoderArchitecture {
 public:
  explicit DeepSeekV3(const DecoderArgs& a) : DecoderArchitecture(finish(a)) {}
  std::string family() const override { return "deepseek_v3"; }
  Dimensions dimensions() const override { return dimensions_of(args(), decoder_fields(keys())); }
  std::string hf_class() const override { return "DeepseekV3ForCausalLM"; }
  nlohmann::json hf_config(const std::string& torch_dtype, int64_t max_seq_len) const override {
    const auto& a = args();
    auto c = decoder_hf_config(a, torch_dtype, std::max<int64_t>(max_seq_len, a.max_seq_len));
    c["architectures"] = {hf_class()};
    c["model_type"] = "deepseek_v3";
    c["head_dim"] = a.qk_rope_head_dim;
    c["q_lora_rank"] = a.q_lora_rank > 0 ? nlohmann::json(a.q_lora_rank) : nlohmann::json(nullptr);
    c["kv_lora_rank"] = a.kv_lora_rank;
    c["qk_nope_head_dim"] = a.qk_nope_head_dim;
    c["qk_rope_head_dim"] = a.qk_rope_head_dim;
    c["v_head_dim"] = a.v_head_dim;
    c["rope_interleave"] = true;
    c["n_routed_experts"] = a.num_experts;
    c["n_shared_experts"] = a.num_shared_experts;
    c["num_experts_per_tok"] = a.top_k;
    c["moe_intermediate_size"] = a.moe_inter_dim;
    c["first_k_dense_replace"] = a.n_dense_layers;
    c["n_group"] = a.n_expert_groups;
    c["topk_group"] = a.n_limited_groups;
    c["norm_topk_prob"] = a.route_norm;
    c["routed_scaling_factor"] = a.route_scale;
    c["num_nextn_predict_layers"] = a.mtp_layers;
    return c;
  }
  checkpoint::TensorMap to_hf(const checkpoint::TensorMap& native) const override {
    if (!args().sigmoid_scores)
      throw std::runtime_error("deepseek_v3 with softmax router scores (this flavor's) has no Hugging Face form: "
                               "DeepseekV3 routes by sigmoid");
    return DecoderArchitecture::to_hf(native);
  }
};

ArchitecturePtr configure(const std::string& flavor, const Dimensions& overrides) {
  return configure_decoder<DeepSeekV3>(registry(), "deepseek_v3", keys(), flavor, overrides);
}

ArchitecturePtr from_hf_config(const nlohmann::json& config, const std::string& path) {
  const HfConfigReader r(config, path);
  auto base = registry().front().second;
  base.q_lora_rank = r.integer("q_lora_rank", 0);
  base.kv_lora_rank = r.integer("kv_lora_rank");
  base.qk_nope_head_dim = r.integer("qk_nope_head_dim");
  base.qk_rope_head_dim = r.integer("qk_rope_head_dim");
  base.v_head_dim = r.integer("v_head_dim");
  base.num_experts = r.integer("n_routed_experts");
  base.num_shared_experts = r.integer("n_shared_experts", 0);
  base.top_k = r.integer("num_experts_per_tok");
  base.moe_inter_dim = r.integer("moe_intermediate_size");
  base.n_dense_layers = r.integer("first_k_dense_replace", 0);
  base.n_expert_groups = r.integer("n_group", 1);
  base.n_limited_groups = r.integer("topk_group", 1);
  base.route_norm = r.flag("norm_topk_prob", true);
  base.route_scale = r.number("routed_scaling_factor", 1.0);
  base.sigmoid_scores = true;
  base.mtp_layers = r.integer("num_nextn_predict_layers", 0);
  base.rope_yarn_factor = 0;
  base.max_seq_len = r.integer("max_position_embeddings", base.max_seq_len);
  if (!r.flag("rope_interleave", true)) r.fail("rope_interleave = false is not supported");
  return decoder_from_hf_config<DeepSeekV3>(config, path, "deepseek_v3", base,
                                            [](const HfConfigReader&, const DecoderArgs&) {});
}

}  // namespace

ModelSpec spec() { return {"deepseek_v3", flavor_names(registry()), "deepseek_v3", configure, from_hf_config}; }

}  // namespace troupe::models::deepseek_v3
