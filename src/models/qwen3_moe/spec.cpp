#include "models/qwen3_moe/spec.h"

#include <algorithm>
#include <vector>

#include "models/common/decoder_architecture.h"
#include "models/common/hf_decoder.h"

namespace troupe::models::qwen3_moe {

namespace {

const std::vector<std::string>& keys() {
  static const std::vector<std::string> k = {
      "dim",         "n_layers",   "n_heads",        "n_kv_heads",     "head_dim",      "ffn_hidden_dim",
      "vocab_size",  "norm_eps",   "rope_theta",     "tie_embeddings", "num_experts",   "top_k",
      "moe_inter_dim", "moe_every", "n_dense_layers", "route_norm",    "aux_loss_coeff", "load_balance_coeff",
      "aux_loss_per_sequence"};
  return k;
}

struct Sizes {
  int64_t dim, layers, heads, kv_heads, head_dim, ffn, experts, top_k, moe_inter, vocab = 151936;
};

DecoderArgs make(const Sizes& s) {
  DecoderArgs a;
  a.dim = s.dim;
  a.n_layers = s.layers;
  a.n_heads = s.heads;
  a.n_kv_heads = s.kv_heads;
  a.head_dim = s.head_dim;
  a.ffn_hidden_dim = s.ffn;
  a.vocab_size = s.vocab;
  a.norm_eps = 1e-6;
  a.rope_theta = 1e6;
  a.qk_norm = true;
  a.max_seq_len = 40960;
  a.num_experts = s.experts;
  a.top_k = s.top_k;
  a.moe_inter_dim = s.moe_inter;
  a.route_norm = true;
  a.aux_loss_coeff = 0.001;
  return a;
}

// The published config.json of each size (Qwen/Qwen3-30B-A3B, Qwen/Qwen3-235B-A22B), and a debug
// model for the bundled 2048-token tokenizer.
const DecoderFlavors& registry() {
  static const DecoderFlavors flavors = {
      {"debugmodel", make({256, 4, 16, 8, 32, 768, 8, 2, 128, 2048})},
      {"30B-A3B", make({2048, 48, 32, 4, 128, 6144, 128, 8, 768})},
      {"235B-A22B", make({4096, 94, 64, 4, 128, 12288, 128, 8, 1536})},
  };
  return flavors;
}

class Qwen3Moe : public DecoderArchitecture {
 public:
  using DecoderArchitecture::DecoderArchitecture;
  std::string family() const override { return "qwen3_moe"; }
  Dimensions dimensions() const override { return dimensions_of(args(), decoder_fields(keys())); }
  std::string hf_class() const override { return "Qwen3MoeForCausalLM"; }
  nlohmann::json hf_config(const std::string& torch_dtype, int64_t max_seq_len) const override {
    const auto& a = args();
    auto c = decoder_hf_config(a, torch_dtype, std::max<int64_t>(max_seq_len, 40960));
    c["architectures"] = {hf_class()};
    c["model_type"] = "qwen3_moe";
    c["use_sliding_window"] = false;
    c["attention_dropout"] = 0.0;
    c["num_experts"] = a.num_experts;
    c["num_experts_per_tok"] = a.top_k;
    c["moe_intermediate_size"] = a.moe_inter_dim;
    c["norm_topk_prob"] = a.route_norm;
    c["decoder_sparse_step"] = a.moe_every;
    std::vector<int64_t> dense;
    for (int64_t i = 0; i < a.n_dense_layers; ++i) dense.push_back(i);
    c["mlp_only_layers"] = dense;
    c["router_aux_loss_coef"] = a.aux_loss_coeff;
    c["output_router_logits"] = false;
    return c;
  }
};

ArchitecturePtr configure(const std::string& flavor, const Dimensions& overrides) {
  return configure_decoder<Qwen3Moe>(registry(), "qwen3_moe", keys(), flavor, overrides);
}

ArchitecturePtr from_hf_config(const nlohmann::json& config, const std::string& path) {
  auto base = make({0, 0, 0, 0, 0, 0, 0, 0, 0});
  const HfConfigReader r(config, path);
  base.num_experts = r.integer("num_experts");
  base.top_k = r.integer("num_experts_per_tok");
  base.moe_inter_dim = r.integer("moe_intermediate_size");
  base.route_norm = r.flag("norm_topk_prob", false);
  base.moe_every = r.integer("decoder_sparse_step", 1);
  base.aux_loss_coeff = r.number("router_aux_loss_coef", 0.001);
  // Troupe's dense blocks are the first n_dense_layers; HF lists them.
  if (config.contains("mlp_only_layers") && config["mlp_only_layers"].is_array()) {
    const auto& dense = config["mlp_only_layers"];
    for (size_t i = 0; i < dense.size(); ++i)
      if (!dense[i].is_number_integer() || dense[i].get<int64_t>() != static_cast<int64_t>(i))
        r.fail("mlp_only_layers must be the first layers in order (0, 1, ...), got " + dense.dump());
    base.n_dense_layers = static_cast<int64_t>(dense.size());
  }
  return decoder_from_hf_config<Qwen3Moe>(config, path, "qwen3_moe", base,
                                          [](const HfConfigReader& rd, const DecoderArgs& d) {
                                            if (rd.flag("use_sliding_window", false))
                                              rd.fail("use_sliding_window = true is not supported");
                                            if (d.rope_scaling_factor > 0)
                                              rd.fail("rope scaling is not supported for qwen3_moe");
                                          });
}

}  // namespace

ModelSpec spec() { return {"qwen3_moe", flavor_names(registry()), "qwen3_moe", configure, from_hf_config}; }

}  // namespace troupe::models::qwen3_moe
