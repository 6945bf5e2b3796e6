#include "models/qwen3/spec.h"

#include <algorithm>
#include <vector>

#include "models/common/decoder_architecture.h"
#include "models/common/hf_decoder.h"

namespace troupe::models::qwen3 {

namespace {

// [model] keys of qwen3: the decoder's, with the norm on q and k always on.
const std::vector<std::string>& keys() {
  static const std::vector<std::string> k = {"dim",        "n_layers", "n_heads",    "n_kv_heads",    "head_dim",
                                             "ffn_hidden_dim", "vocab_size", "norm_eps", "rope_theta", "tie_embeddings"};
  return k;
}

DecoderArgs make(int64_t dim, int64_t layers, int64_t heads, int64_t kv_heads, int64_t head_dim, int64_t ffn, bool tied,
                 int64_t vocab = 151936) {
  DecoderArgs a;
  a.dim = dim;
  a.n_layers = layers;
  a.n_heads = heads;
  a.n_kv_heads = kv_heads;
  a.head_dim = head_dim;
  a.ffn_hidden_dim = ffn;
  a.vocab_size = vocab;
  a.norm_eps = 1e-6;
  a.rope_theta = 1e6;
  a.qk_norm = true;
  a.max_seq_len = 40960;
  a.tie_embeddings = tied;
  return a;
}

// The published config.json of each size (Qwen/Qwen3-*), and a debug model for a 2048-token
// tokenizer whose head_dim (32) is not dim / n_heads (16), as in the small published sizes.
const DecoderFlavors& registry() {
  static const DecoderFlavors flavors = {
      {"debugmodel", make(256, 6, 16, 8, 32, 768, false, 2048)},
      {"0.6B", make(1024, 28, 16, 8, 128, 3072, true)},
      {"1.7B", make(2048, 28, 16, 8, 128, 6144, true)},
      {"4B", make(2560, 36, 32, 8, 128, 9728, true)},
      {"8B", make(4096, 36, 32, 8, 128, 12288, false)},
      {"14B", make(5120, 40, 40, 8, 128, 17408, false)},
      {"32B", make(5120, 64, 64, 8, 128, 25600, false)},
  };
  return flavors;
}

class Qwen3 : public DecoderArchitecture {
 public:
  using DecoderArchitecture::DecoderArchitecture;
  std::string family() const override { return "qwen3"; }
  Dimensions dimensions() const override { return dimensions_of(args(), decoder_fields(keys())); }
  std::string hf_class() const override { return "Qwen3ForCausalLM"; }
  nlohmann::json hf_config(const std::string& torch_dtype, int64_t max_seq_len) const override {
    auto c = decoder_hf_config(args(), torch_dtype, std::max<int64_t>(max_seq_len, 40960));
    c["architectures"] = {hf_class()};
    c["model_type"] = "qwen3";
    c["use_sliding_window"] = false;
    c["attention_dropout"] = 0.0;
    return c;
  }
};

ArchitecturePtr configure(const std::string& flavor, const Dimensions& overrides) {
  return configure_decoder<Qwen3>(registry(), "qwen3", keys(), flavor, overrides);
}

ArchitecturePtr from_hf_config(const nlohmann::json& config, const std::string& path) {
  return decoder_from_hf_config<Qwen3>(config, path, "qwen3", make(0, 0, 0, 0, 0, 0, false),
                                       [](const HfConfigReader& r, const DecoderArgs& d) {
                                         if (r.flag("use_sliding_window", false))
                                           r.fail("use_sliding_window = true is not supported");
                                         if (d.rope_scaling_factor > 0) r.fail("rope scaling is not supported for qwen3");
                                       });
}

}  // namespace

ModelSpec spec() { return {"qwen3", flavor_names(registry()), "qwen3", configure, from_hf_config}; }

}  // namespace troupe::models::qwen3
