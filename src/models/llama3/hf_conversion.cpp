#include "models/llama3/hf_conversion.h"

#include <torch/torch.h>

#include <stdexcept>

namespace troupe::models::llama3 {

namespace {

struct NamePair {
  std::string hf, titan;
  int64_t rotary_heads = 0;  // > 0: permute rows between the two rotary layouts
};

std::vector<NamePair> name_pairs(const ModelArgs& a) {
  std::vector<NamePair> pairs{{"model.embed_tokens.weight", "tok_embeddings.weight"}, {"model.norm.weight", "norm.weight"}};
  if (!a.tie_embeddings) pairs.push_back({"lm_head.weight", "output.weight"});
  for (int64_t i = 0; i < a.n_layers; ++i) {
    const auto hf = "model.layers." + std::to_string(i) + ".";
    const auto titan = "layers." + std::to_string(i) + ".";
    pairs.push_back({hf + "self_attn.q_proj.weight", titan + "attention.wq.weight", a.n_heads});
    pairs.push_back({hf + "self_attn.k_proj.weight", titan + "attention.wk.weight", a.kv_heads()});
    pairs.push_back({hf + "self_attn.v_proj.weight", titan + "attention.wv.weight"});
    pairs.push_back({hf + "self_attn.o_proj.weight", titan + "attention.wo.weight"});
    pairs.push_back({hf + "mlp.gate_proj.weight", titan + "feed_forward.w1.weight"});
    pairs.push_back({hf + "mlp.down_proj.weight", titan + "feed_forward.w2.weight"});
    pairs.push_back({hf + "mlp.up_proj.weight", titan + "feed_forward.w3.weight"});
    pairs.push_back({hf + "input_layernorm.weight", titan + "attention_norm.weight"});
    pairs.push_back({hf + "post_attention_layernorm.weight", titan + "ffn_norm.weight"});
  }
  return pairs;
}

// Rows of one head: Meta orders them (pair, member), HF (member, pair).
at::Tensor interleaved_to_halves(const at::Tensor& w, int64_t heads) {
  const auto rows_per_head = w.size(0) / heads;
  return w.view({heads, rows_per_head / 2, 2, w.size(1)}).transpose(1, 2).reshape_as(w).contiguous();
}

at::Tensor halves_to_interleaved(const at::Tensor& w, int64_t heads) {
  const auto rows_per_head = w.size(0) / heads;
  return w.view({heads, 2, rows_per_head / 2, w.size(1)}).transpose(1, 2).reshape_as(w).contiguous();
}

const at::Tensor& require(const checkpoint::TensorMap& m, const std::string& name, const char* side) {
  auto it = m.find(name);
  if (it == m.end()) throw std::runtime_error(std::string(side) + " tensor '" + name + "' is missing");
  return it->second;
}

void reject_extras(const checkpoint::TensorMap& m, const std::vector<NamePair>& pairs, bool hf_side) {
  for (const auto& [name, t] : m) {
    bool known = false;
    for (const auto& p : pairs) known = known || (hf_side ? p.hf : p.titan) == name;
    // Tied HF checkpoints sometimes still carry lm_head.weight: it equals the embedding.
    if (!known && !(hf_side && name == "lm_head.weight")) throw std::runtime_error("unexpected tensor '" + name + "'");
  }
}

}  // namespace

checkpoint::TensorMap from_hf(const checkpoint::TensorMap& hf, const ModelArgs& args) {
  const auto pairs = name_pairs(args);
  reject_extras(hf, pairs, true);
  checkpoint::TensorMap out;
  for (const auto& p : pairs) {
    const auto& w = require(hf, p.hf, "Hugging Face");
    out[p.titan] = p.rotary_heads ? halves_to_interleaved(w, p.rotary_heads) : w;
  }
  return out;
}

checkpoint::TensorMap to_hf(const checkpoint::TensorMap& titan, const ModelArgs& args) {
  const auto pairs = name_pairs(args);
  reject_extras(titan, pairs, false);
  checkpoint::TensorMap out;
  for (const auto& p : pairs) {
    const auto& w = require(titan, p.titan, "Troupe");
    out[p.hf] = p.rotary_heads ? interleaved_to_halves(w, p.rotary_heads) : w;
  }
  return out;
}

}  // namespace troupe::models::llama3
