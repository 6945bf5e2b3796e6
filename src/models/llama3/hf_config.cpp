#include "models/llama3/hf_config.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <sstream>
#include <stdexcept>

namespace troupe::models::llama3 {

namespace {

nlohmann::json rope_parameters(const ModelArgs& a) {
  if (!a.rope_scaling) return {{"rope_type", "default"}, {"rope_theta", a.rope_theta}};
  const auto& s = *a.rope_scaling;
  return {{"rope_type", "llama3"},
          {"rope_theta", a.rope_theta},
          {"factor", s.factor},
          {"low_freq_factor", s.low_freq_factor},
          {"high_freq_factor", s.high_freq_factor},
          {"original_max_position_embeddings", s.original_max_position_embeddings}};
}

template <class T>
std::string text(const T& v) {
  std::ostringstream os;
  os << v;
  return os.str();
}

}  // namespace

nlohmann::json hf_config(const ModelArgs& a, const std::string& torch_dtype) {
  auto rope = rope_parameters(a);
  nlohmann::json scaling = nullptr;  // older transformers read the scaling from rope_scaling
  if (a.rope_scaling) {
    scaling = rope;
    scaling.erase("rope_theta");
  }
  return {{"architectures", {"LlamaForCausalLM"}},
          {"model_type", "llama"},
          {"hidden_size", a.dim},
          {"intermediate_size", a.ffn_hidden_dim()},
          {"num_hidden_layers", a.n_layers},
          {"num_attention_heads", a.n_heads},
          {"num_key_value_heads", a.kv_heads()},
          {"head_dim", a.head_dim()},
          {"vocab_size", a.vocab_size},
          {"rms_norm_eps", a.norm_eps},
          {"rope_theta", a.rope_theta},
          {"rope_scaling", scaling},
          {"rope_parameters", rope},
          // Meta publishes 131072 for every scaled Llama 3.1 / 3.2; transformers warns below the original length.
          {"max_position_embeddings", a.rope_scaling ? std::max<int64_t>(a.max_seq_len, 131072) : a.max_seq_len},
          {"tie_word_embeddings", a.tie_embeddings},
          {"hidden_act", "silu"},
          {"attention_bias", false},
          {"mlp_bias", false},
          {"torch_dtype", torch_dtype},
          {"dtype", torch_dtype}};
}

void check_hf_config(const nlohmann::json& c, const ModelArgs& a, const std::string& path) {
  auto mismatch = [&](const std::string& field, const std::string& got, const std::string& want) {
    throw std::runtime_error(path + ": " + field + " is " + got + ", the configured model has " + want);
  };
  auto number = [&](const char* field, double want, std::optional<double> fallback = std::nullopt) {
    if (!c.contains(field) || c[field].is_null()) {
      if (fallback && *fallback == want) return;
      if (fallback) mismatch(field, "absent (default " + text(*fallback) + ")", text(want));
      throw std::runtime_error(path + ": " + field + " is missing");
    }
    if (!c[field].is_number()) throw std::runtime_error(path + ": " + field + " is not a number");
    const double got = c[field].get<double>();
    if (std::abs(got - want) > 1e-12 * std::max(1.0, std::abs(want))) mismatch(field, text(got), text(want));
  };
  if (c.value("model_type", std::string()) != "llama")
    throw std::runtime_error(path + ": model_type is '" + c.value("model_type", std::string()) + "', not 'llama'");
  number("hidden_size", static_cast<double>(a.dim));
  number("intermediate_size", static_cast<double>(a.ffn_hidden_dim()));
  number("num_hidden_layers", static_cast<double>(a.n_layers));
  number("num_attention_heads", static_cast<double>(a.n_heads));
  number("num_key_value_heads", static_cast<double>(a.kv_heads()), static_cast<double>(a.n_heads));
  number("head_dim", static_cast<double>(a.head_dim()), static_cast<double>(a.head_dim()));
  number("vocab_size", static_cast<double>(a.vocab_size));
  number("rms_norm_eps", a.norm_eps);
  const bool tied = c.value("tie_word_embeddings", false);
  if (tied != a.tie_embeddings) mismatch("tie_word_embeddings", text(tied), text(a.tie_embeddings));
  // transformers 5 keeps theta and scaling in rope_parameters; older versions in rope_theta and rope_scaling.
  nlohmann::json rope = c.contains("rope_parameters") && c["rope_parameters"].is_object() ? c["rope_parameters"]
                        : c.contains("rope_scaling") && c["rope_scaling"].is_object()   ? c["rope_scaling"]
                                                                                         : nlohmann::json::object();
  if (!rope.contains("rope_theta") && c.contains("rope_theta")) rope["rope_theta"] = c["rope_theta"];
  const auto where = std::string("rope_parameters.");
  const auto type = rope.value("rope_type", rope.value("type", std::string("default")));
  if ((type == "llama3") != a.rope_scaling.has_value())
    mismatch(where + "rope_type", "'" + type + "'", a.rope_scaling ? "'llama3'" : "'default'");
  auto rope_number = [&](const char* field, double want) {
    if (!rope.contains(field) || !rope[field].is_number()) throw std::runtime_error(path + ": " + where + field + " is missing");
    const double got = rope[field].get<double>();
    if (std::abs(got - want) > 1e-12 * std::max(1.0, std::abs(want))) mismatch(where + field, text(got), text(want));
  };
  rope_number("rope_theta", a.rope_theta);
  if (a.rope_scaling) {
    rope_number("factor", a.rope_scaling->factor);
    rope_number("low_freq_factor", a.rope_scaling->low_freq_factor);
    rope_number("high_freq_factor", a.rope_scaling->high_freq_factor);
    rope_number("original_max_position_embeddings", static_cast<double>(a.rope_scaling->original_max_position_embeddings));
  }
}

}  // namespace troupe::models::llama3
