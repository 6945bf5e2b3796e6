#include "models/registry.h"

#include <algorithm>
#include <stdexcept>

#include "models/deepseek_v3/spec.h"
#include "models/llama3/spec.h"
#include "models/qwen3/spec.h"
#include "models/qwen3_moe/spec.h"

namespace troupe::models {

const std::vector<ModelSpec>& model_specs() {
  static const std::vector<ModelSpec> specs = {llama3::spec(), qwen3::spec(), qwen3_moe::spec(), deepseek_v3::spec()};
  return specs;
}

const ModelSpec& model_spec(const std::string& name) {
  for (const auto& s : model_specs())
    if (s.name == name) return s;
  std::string known;
  for (const auto& s : model_specs()) known += (known.empty() ? "" : ", ") + s.name;
  throw std::invalid_argument("model.name: unknown model '" + name + "' (known: " + known + ")");
}

ArchitecturePtr configure_model(const std::string& name, const std::string& flavor, Dimensions overrides,
                                int64_t tokenizer_vocab) {
  const auto& spec = model_spec(name);
  const auto vocab = std::find_if(overrides.begin(), overrides.end(), [](const auto& kv) { return kv.first == "vocab_size"; });
  if (vocab == overrides.end()) {
    // Rounded up to a multiple of 128 rows (Megatron's make-vocab-size-divisible-by): the output
    // projection's GEMMs on a row count that is no multiple of 8 fall to cuBLAS's unaligned
    // kernels, which took 41% of a Qwen3 1.7B step (151,669 tokens) on an H100.
    constexpr int64_t kMultiple = 128;
    const auto padded = (tokenizer_vocab + kMultiple - 1) / kMultiple * kMultiple;
    overrides.emplace_back("vocab_size", std::to_string(padded));
    return spec.configure(flavor, overrides);
  }
  auto arch = spec.configure(flavor, overrides);
  if (arch->vocab_size() < tokenizer_vocab)
    throw std::invalid_argument("model.vocab_size " + std::to_string(arch->vocab_size()) + " is smaller than the tokenizer's " +
                                std::to_string(tokenizer_vocab) + " tokens");
  return arch;
}

}  // namespace troupe::models
