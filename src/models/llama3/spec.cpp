#include "models/llama3/spec.h"

#include <algorithm>

#include "models/common/decoder_architecture.h"
#include "models/common/hf_decoder.h"
#include "models/llama3/model_args.h"

namespace troupe::models::llama3 {

namespace {

class Llama3 : public DecoderArchitecture {
 public:
  using DecoderArchitecture::DecoderArchitecture;
  std::string family() const override { return "llama3"; }
  Dimensions dimensions() const override { return dimensions_of(args(), decoder_fields(recorded_keys())); }
  std::string hf_class() const override { return "LlamaForCausalLM"; }
  nlohmann::json hf_config(const std::string& torch_dtype, int64_t max_seq_len) const override {
    // Meta publishes 131072 for every scaled Llama 3.1 / 3.2; transformers warns below the original length.
    const auto positions = args().rope_scaling_factor > 0 ? std::max<int64_t>(max_seq_len, 131072) : max_seq_len;
    auto c = decoder_hf_config(args(), torch_dtype, positions);
    c["architectures"] = {hf_class()};
    c["model_type"] = "llama";
    c["mlp_bias"] = false;
    return c;
  }
};

ArchitecturePtr configure(const std::string& flavor_name, const Dimensions& overrides) {
  auto a = flavor(flavor_name);
  apply_dimensions(a, fields(), overrides, "llama3");
  return std::make_shared<Llama3>(a.decoder());
}

ArchitecturePtr from_hf_config(const nlohmann::json& config, const std::string& path) {
  return decoder_from_hf_config<Llama3>(config, path, "llama", {});
}

}  // namespace

ModelSpec spec() { return {"llama3", flavor_names(), "llama", configure, from_hf_config}; }

}  // namespace troupe::models::llama3
