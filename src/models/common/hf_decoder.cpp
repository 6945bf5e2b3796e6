#include "models/common/hf_decoder.h"

#include <torch/torch.h>

#include <map>
#include <stdexcept>

namespace troupe::models {

namespace {

struct NamePair {
  std::string hf, native;
  int64_t rotary_heads = 0;  // > 0: permute rows between the two rotary layouts
  int64_t expert = -1;       // >= 0: the HF tensor is this expert's slice of the native stack
  bool shared_copy = false;  // an HF copy of a tensor the model shares (exported, skipped on import)
  bool optional = false;     // may be absent on either side (a buffer: as built when imported without it)
};

std::vector<NamePair> name_pairs(const DecoderArgs& a) {
  std::vector<NamePair> pairs;
  // A SwiGLU feed-forward: HF's gate, down and up projections are w1, w2 and w3 (`suffix` after
  // each native name: ".weight", or none for a slice of the experts' stacks).
  auto swiglu = [&](const std::string& hf, const std::string& native, const std::string& suffix, int64_t expert) {
    pairs.push_back({hf + "gate_proj.weight", native + "w1" + suffix, 0, expert});
    pairs.push_back({hf + "down_proj.weight", native + "w2" + suffix, 0, expert});
    pairs.push_back({hf + "up_proj.weight", native + "w3" + suffix, 0, expert});
  };
  pairs = {{"model.embed_tokens.weight", "tok_embeddings.weight"}, {"model.norm.weight", "norm.weight"}};
  if (!a.tie_embeddings) pairs.push_back({"lm_head.weight", "output.weight"});
  // A block: layer i of HF's numbering, under `native`.
  auto block = [&](int64_t i, const std::string& native) {
    const auto hf = "model.layers." + std::to_string(i) + ".";
    if (a.mla()) {
      // DeepSeek's checkpoints keep the rotary parts in interleaved pairs (rope_interleave): no permutation.
      if (a.q_lora_rank > 0) {
        pairs.push_back({hf + "self_attn.q_a_proj.weight", native + "attention.wq_a.weight"});
        pairs.push_back({hf + "self_attn.q_a_layernorm.weight", native + "attention.q_norm.weight"});
        pairs.push_back({hf + "self_attn.q_b_proj.weight", native + "attention.wq_b.weight"});
      } else {
        pairs.push_back({hf + "self_attn.q_proj.weight", native + "attention.wq.weight"});
      }
      pairs.push_back({hf + "self_attn.kv_a_proj_with_mqa.weight", native + "attention.wkv_a.weight"});
      pairs.push_back({hf + "self_attn.kv_a_layernorm.weight", native + "attention.kv_norm.weight"});
      pairs.push_back({hf + "self_attn.kv_b_proj.weight", native + "attention.wkv_b.weight"});
    } else {
      pairs.push_back({hf + "self_attn.q_proj.weight", native + "attention.wq.weight", a.n_heads});
      pairs.push_back({hf + "self_attn.k_proj.weight", native + "attention.wk.weight", a.n_kv_heads});
      pairs.push_back({hf + "self_attn.v_proj.weight", native + "attention.wv.weight"});
    }
    pairs.push_back({hf + "self_attn.o_proj.weight", native + "attention.wo.weight"});
    if (a.qk_norm) {
      pairs.push_back({hf + "self_attn.q_norm.weight", native + "attention.q_norm.weight", 1});
      pairs.push_back({hf + "self_attn.k_norm.weight", native + "attention.k_norm.weight", 1});
    }
    if (a.moe_block(i)) {
      // HF keeps one tensor per expert (the checkpoints' layout, which transformers 5 fuses on load).
      pairs.push_back({hf + "mlp.gate.weight", native + "moe.router.gate.weight"});
      // DeepSeek V3's gate carries the auxiliary-loss-free balancing bias (the model's buffer).
      if (a.sigmoid_scores)
        pairs.push_back({hf + "mlp.gate.e_score_correction_bias", native + "moe.expert_bias", 0, -1, false, true});
      for (int64_t e = 0; e < a.num_experts; ++e)
        swiglu(hf + "mlp.experts." + std::to_string(e) + ".", native + "moe.experts.", "", e);
      if (a.num_shared_experts > 0) swiglu(hf + "mlp.shared_experts.", native + "moe.shared_experts.", ".weight", -1);
    } else {
      swiglu(hf + "mlp.", native + "feed_forward.", ".weight", -1);
    }
    pairs.push_back({hf + "input_layernorm.weight", native + "attention_norm.weight"});
    pairs.push_back({hf + "post_attention_layernorm.weight", native + "ffn_norm.weight"});
  };
  for (int64_t i = 0; i < a.n_layers; ++i) block(i, "layers." + std::to_string(i) + ".");
  // Multi-token prediction: DeepSeek V3's checkpoints number its blocks after the last layer,
  // with their norms and projection, and copies of the embedding and output head they share.
  for (int64_t k = 0; k < a.mtp_layers; ++k) {
    const auto i = a.n_layers + k;
    const auto hf = "model.layers." + std::to_string(i) + ".", native = "mtp_layers." + std::to_string(k) + ".";
    block(i, native);
    pairs.push_back({hf + "enorm.weight", native + "enorm.weight"});
    pairs.push_back({hf + "hnorm.weight", native + "hnorm.weight"});
    pairs.push_back({hf + "eh_proj.weight", native + "eh_proj.weight"});
    pairs.push_back({hf + "shared_head.norm.weight", native + "mtp_norm.weight"});
    pairs.push_back({hf + "embed_tokens.weight", "tok_embeddings.weight", 0, -1, true});
    pairs.push_back({hf + "shared_head.head.weight", a.tie_embeddings ? "tok_embeddings.weight" : "output.weight", 0, -1, true});
  }
  return pairs;
}

// Rows of one head: Meta orders them (pair, member), HF (member, pair). A norm's weight is a
// single head's row order.
at::Tensor interleaved_to_halves(const at::Tensor& w, int64_t heads) {
  const auto m = w.dim() == 1 ? w.unsqueeze(1) : w;
  const auto rows_per_head = m.size(0) / heads;
  return m.view({heads, rows_per_head / 2, 2, m.size(1)}).transpose(1, 2).reshape_as(m).reshape_as(w).contiguous();
}

at::Tensor halves_to_interleaved(const at::Tensor& w, int64_t heads) {
  const auto m = w.dim() == 1 ? w.unsqueeze(1) : w;
  const auto rows_per_head = m.size(0) / heads;
  return m.view({heads, 2, rows_per_head / 2, m.size(1)}).transpose(1, 2).reshape_as(m).reshape_as(w).contiguous();
}

const at::Tensor& require(const checkpoint::TensorMap& m, const std::string& name, const char* side) {
  auto it = m.find(name);
  if (it == m.end()) throw std::runtime_error(std::string(side) + " tensor '" + name + "' is missing");
  return it->second;
}

void reject_extras(const checkpoint::TensorMap& m, const std::vector<NamePair>& pairs, bool hf_side) {
  for (const auto& [name, t] : m) {
    bool known = false;
    for (const auto& p : pairs) known = known || (hf_side ? p.hf : p.native) == name;
    // Tied HF checkpoints sometimes still carry lm_head.weight: it equals the embedding. HF's Qwen3
    // MoE has no balancing bias: a family without its pair leaves it out.
    if (!known && !(hf_side && name == "lm_head.weight") && !(!hf_side && name.ends_with("moe.expert_bias")))
      throw std::runtime_error("unexpected tensor '" + name + "'");
  }
}

at::Tensor permuted(const at::Tensor& w, int64_t heads, bool to_interleaved, const std::string& name) {
  if (w.dim() == 0 || w.size(0) % (2 * heads) != 0)
    throw std::runtime_error("tensor '" + name + "' has shape " + c10::str(w.sizes()) + ", not rows of " +
                             std::to_string(heads) + " rotary head(s)");
  return to_interleaved ? halves_to_interleaved(w, heads) : interleaved_to_halves(w, heads);
}

// Every tensor of `in` under its other name, HF -> native or native -> HF.
checkpoint::TensorMap renamed(const checkpoint::TensorMap& in, const DecoderArgs& args, bool from_hf) {
  const auto pairs = name_pairs(args);
  reject_extras(in, pairs, from_hf);
  checkpoint::TensorMap out;
  std::map<std::string, std::vector<at::Tensor>> stacks;  // HF -> native: each expert's slice, in order
  for (const auto& p : pairs) {
    if (from_hf && p.shared_copy) continue;
    if (p.optional && !in.contains(from_hf ? p.hf : p.native)) continue;
    const auto& [source, target] = from_hf ? std::pair{p.hf, p.native} : std::pair{p.native, p.hf};
    const auto& w = require(in, source, from_hf ? "Hugging Face" : "Troupe");
    if (p.expert >= 0 && from_hf) {
      stacks[target].push_back(w);
    } else if (p.expert >= 0) {
      if (w.dim() < 1 || w.size(0) <= p.expert)
        throw std::runtime_error("tensor '" + source + "' has shape " + c10::str(w.sizes()) + ", no expert " +
                                 std::to_string(p.expert));
      out[target] = w[p.expert].contiguous();
    } else {
      out[target] = p.rotary_heads ? permuted(w, p.rotary_heads, from_hf, source) : w;
    }
  }
  for (auto& [name, slices] : stacks) {
    for (const auto& s : slices)
      if (s.sizes() != slices.front().sizes())
        throw std::runtime_error("the experts of '" + name + "' differ in shape: " + c10::str(s.sizes()) + " and " +
                                 c10::str(slices.front().sizes()));
    out[name] = at::stack(slices);
  }
  return out;
}

}  // namespace

checkpoint::TensorMap decoder_from_hf(const checkpoint::TensorMap& hf, const DecoderArgs& args) {
  return renamed(hf, args, true);
}

checkpoint::TensorMap decoder_to_hf(const checkpoint::TensorMap& native, const DecoderArgs& args) {
  return renamed(native, args, false);
}

nlohmann::json decoder_hf_config(const DecoderArgs& a, const std::string& torch_dtype, int64_t max_positions) {
  nlohmann::json rope = {{"rope_type", "default"}, {"rope_theta", a.rope_theta}};
  nlohmann::json scaling = nullptr;  // older transformers read the scaling from rope_scaling
  if (a.rope_yarn_factor > 1) {
    scaling = {{"rope_type", "yarn"},
               {"factor", a.rope_yarn_factor},
               {"original_max_position_embeddings", a.rope_original_max_positions},
               {"beta_fast", a.rope_beta_fast},
               {"beta_slow", a.rope_beta_slow},
               {"mscale", a.rope_mscale},
               {"mscale_all_dim", a.rope_mscale}};
    rope.update(scaling);
  }
  if (a.rope_scaling_factor > 0) {
    scaling = {{"rope_type", "llama3"},
               {"factor", a.rope_scaling_factor},
               {"low_freq_factor", a.rope_low_freq_factor},
               {"high_freq_factor", a.rope_high_freq_factor},
               {"original_max_position_embeddings", a.rope_original_max_positions}};
    rope.update(scaling);
  }
  return {{"hidden_size", a.dim},
          {"intermediate_size", a.ffn_hidden_dim},
          {"num_hidden_layers", a.n_layers},
          {"num_attention_heads", a.n_heads},
          {"num_key_value_heads", a.n_kv_heads},
          {"head_dim", a.head_dim},
          {"vocab_size", a.vocab_size},
          {"rms_norm_eps", a.norm_eps},
          {"rope_theta", a.rope_theta},
          {"rope_scaling", scaling},
          {"rope_parameters", rope},
          {"max_position_embeddings", max_positions},
          {"tie_word_embeddings", a.tie_embeddings},
          {"hidden_act", "silu"},
          {"attention_bias", false},
          {"torch_dtype", torch_dtype},
          {"dtype", torch_dtype}};
}

void HfConfigReader::fail(const std::string& what) const { throw std::runtime_error(path_ + ": " + what); }

int64_t HfConfigReader::integer(const char* field, std::optional<int64_t> fallback) const {
  if (!c_.contains(field) || c_[field].is_null()) {
    if (fallback) return *fallback;
    fail(std::string(field) + " is missing");
  }
  if (!c_[field].is_number_integer()) fail(std::string(field) + " is not an integer");
  return c_[field].get<int64_t>();
}

double HfConfigReader::number(const char* field, std::optional<double> fallback) const {
  if (!c_.contains(field) || c_[field].is_null()) {
    if (fallback) return *fallback;
    fail(std::string(field) + " is missing");
  }
  if (!c_[field].is_number()) fail(std::string(field) + " is not a number");
  return c_[field].get<double>();
}

bool HfConfigReader::flag(const char* field, bool fallback) const {
  if (!c_.contains(field) || c_[field].is_null()) return fallback;
  if (!c_[field].is_boolean()) fail(std::string(field) + " is not true or false");
  return c_[field].get<bool>();
}

std::string HfConfigReader::text(const char* field) const {
  if (!c_.contains(field) || !c_[field].is_string()) fail(std::string(field) + " is missing");
  return c_[field].get<std::string>();
}

void HfConfigReader::rope(DecoderArgs& a) const {
  // transformers 5 keeps theta and scaling in rope_parameters; older versions in rope_theta and rope_scaling.
  nlohmann::json rope = c_.contains("rope_parameters") && c_["rope_parameters"].is_object() ? c_["rope_parameters"]
                        : c_.contains("rope_scaling") && c_["rope_scaling"].is_object()   ? c_["rope_scaling"]
                                                                                           : nlohmann::json::object();
  if (!rope.contains("rope_theta") && c_.contains("rope_theta")) rope["rope_theta"] = c_["rope_theta"];
  const HfConfigReader r(rope, path_ + ": rope_parameters");
  a.rope_theta = r.number("rope_theta", a.rope_theta);
  const auto type = rope.value("rope_type", rope.value("type", std::string("default")));
  a.rope_scaling_factor = 0;
  if (type == "llama3") {
    a.rope_scaling_factor = r.number("factor");
    a.rope_low_freq_factor = r.number("low_freq_factor");
    a.rope_high_freq_factor = r.number("high_freq_factor");
    a.rope_original_max_positions = r.integer("original_max_position_embeddings");
  } else if (type == "yarn") {
    a.rope_yarn_factor = r.number("factor");
    a.rope_original_max_positions = r.integer("original_max_position_embeddings");
    a.rope_beta_fast = r.number("beta_fast", 32);
    a.rope_beta_slow = r.number("beta_slow", 1);
    a.rope_mscale = r.number("mscale_all_dim", r.number("mscale", 1.0));
    // The cos/sin factor mscale / mscale_all_dim is one in DeepSeek's configs; other values are not built.
    if (r.number("mscale", a.rope_mscale) != a.rope_mscale) fail("yarn mscale differs from mscale_all_dim");
  } else if (type != "default") {
    fail("rope_type '" + type + "' is not supported (default, llama3, yarn)");
  }
}

void HfConfigReader::decoder(DecoderArgs& a) const {
  a.dim = integer("hidden_size");
  a.ffn_hidden_dim = integer("intermediate_size");
  a.n_layers = integer("num_hidden_layers");
  a.n_heads = integer("num_attention_heads");
  a.n_kv_heads = integer("num_key_value_heads", a.n_heads);
  if (a.n_heads <= 0 || a.dim % a.n_heads != 0) a.head_dim = integer("head_dim");
  else a.head_dim = integer("head_dim", a.dim / a.n_heads);
  a.vocab_size = integer("vocab_size");
  a.norm_eps = number("rms_norm_eps", a.norm_eps);
  a.tie_embeddings = flag("tie_word_embeddings", a.tie_embeddings);
  rope(a);
  if (c_.contains("hidden_act") && c_["hidden_act"] != "silu") fail("hidden_act is not 'silu'");
  if (flag("attention_bias", false)) fail("attention_bias = true is not supported");
  if (flag("mlp_bias", false)) fail("mlp_bias = true is not supported");
}

}  // namespace troupe::models
