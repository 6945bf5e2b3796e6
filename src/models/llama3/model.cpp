#include "models/llama3/model.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <cmath>

#include "kernels/ops.h"

namespace troupe::models::llama3 {

namespace {

class Projection : public torch::nn::Module {
 public:
  Projection(int64_t in, int64_t out, const at::TensorOptions& o)
      : weight(register_parameter("weight", torch::empty({out, in}, o))) {}
  // Mixed precision: the fp32 master weight is cast to the activations' dtype; its gradient
  // arrives in fp32 (kernels::linear).
  at::Tensor forward(const at::Tensor& x, const kernels::InputRecipe& recipe = {}) const {
    return kernels::linear(x, weight, recipe);
  }
  at::Tensor weight;
};

class RMSNorm : public torch::nn::Module {
 public:
  RMSNorm(int64_t dim, double eps, const at::TensorOptions& o)
      : weight(register_parameter("weight", torch::ones({dim}, o))), eps_(eps) {}
  at::Tensor forward(const at::Tensor& x) const { return kernels::rms_norm(x, weight, eps_); }
  double eps() const { return eps_; }
  at::Tensor weight;

 private:
  double eps_;
};

class Attention : public torch::nn::Module {
 public:
  Attention(const ModelArgs& a, const at::TensorOptions& o)
      : n_heads_(a.n_heads), n_kv_heads_(a.kv_heads()), head_dim_(a.head_dim()) {
    wq = register_module("wq", std::make_shared<Projection>(a.dim, n_heads_ * head_dim_, o));
    wk = register_module("wk", std::make_shared<Projection>(a.dim, n_kv_heads_ * head_dim_, o));
    wv = register_module("wv", std::make_shared<Projection>(a.dim, n_kv_heads_ * head_dim_, o));
    wo = register_module("wo", std::make_shared<Projection>(n_heads_ * head_dim_, a.dim, o));
  }

  // `recipe`: how x is recomputed, when the projections are not to keep it.
  at::Tensor forward(const at::Tensor& x, const RotaryTables& rope, const kernels::InputRecipe& recipe = {}) const {
    const auto B = x.size(0), S = x.size(1);
    auto qkv = kernels::linear_group(x, {wq->weight, wk->weight, wv->weight}, recipe);
    auto q = kernels::rotary(qkv[0].view({B, S, n_heads_, head_dim_}), rope.cos, rope.sin);
    auto k = kernels::rotary(qkv[1].view({B, S, n_kv_heads_, head_dim_}), rope.cos, rope.sin);
    auto v = qkv[2].view({B, S, n_kv_heads_, head_dim_});
    // Grouped-query attention inside SDPA (each kv head serves n_heads/n_kv_heads consecutive
    // q heads) instead of materialising the repeated k and v.
    auto out = at::scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                std::nullopt, 0.0, /*is_causal=*/true, std::nullopt,
                                                /*enable_gqa=*/n_kv_heads_ != n_heads_);
    return wo->forward(out.transpose(1, 2).reshape({B, S, n_heads_ * head_dim_}));
  }

  std::shared_ptr<Projection> wq, wk, wv, wo;

 private:
  int64_t n_heads_, n_kv_heads_, head_dim_;
};

class FeedForward : public torch::nn::Module {
 public:
  FeedForward(const ModelArgs& a, const at::TensorOptions& o) {
    const auto hidden = a.ffn_hidden_dim();
    w1 = register_module("w1", std::make_shared<Projection>(a.dim, hidden, o));
    w2 = register_module("w2", std::make_shared<Projection>(hidden, a.dim, o));
    w3 = register_module("w3", std::make_shared<Projection>(a.dim, hidden, o));
  }
  // `recipe` given: the projections keep neither x nor SwiGLU's output but recompute them.
  at::Tensor forward(const at::Tensor& x, const kernels::InputRecipe& recipe = {}) const {
    auto gate_up = kernels::linear_group(x, {w1->weight, w3->weight}, recipe);
    auto act = kernels::swiglu(gate_up[0], gate_up[1]);
    if (recipe.op == kernels::InputRecipe::Op::none) return w2->forward(act);
    return w2->forward(act, kernels::InputRecipe::swiglu(gate_up[0], gate_up[1]));
  }
  std::shared_ptr<Projection> w1, w2, w3;
};

class EmbeddingUnit : public Unit {
 public:
  EmbeddingUnit(const ModelArgs& a, const at::TensorOptions& o)
      : weight(register_parameter("weight", torch::empty({a.vocab_size, a.dim}, o))),
        compute_dtype(o.dtype().toScalarType()) {}
  at::Tensor forward(const at::Tensor&, const UnitBatch& batch) override {
    return at::embedding(weight, batch.tokens).to(compute_dtype);
  }
  at::Tensor lookup_table() const override { return weight; }
  at::Tensor weight;
  // Every later unit computes in the dtype of the activations it receives, so this one choice
  // sets the model's compute precision.
  at::ScalarType compute_dtype;
};

class TransformerBlock : public Unit {
 public:
  TransformerBlock(const ModelArgs& a, int64_t layer_id, std::shared_ptr<const RotaryTables> rope,
                   const at::TensorOptions& o)
      : layer_id(layer_id), rope_(std::move(rope)) {
    attention = register_module("attention", std::make_shared<Attention>(a, o));
    feed_forward = register_module("feed_forward", std::make_shared<FeedForward>(a, o));
    attention_norm = register_module("attention_norm", std::make_shared<RMSNorm>(a.dim, a.norm_eps, o));
    ffn_norm = register_module("ffn_norm", std::make_shared<RMSNorm>(a.dim, a.norm_eps, o));
  }
  at::Tensor forward(const at::Tensor& x, const UnitBatch&) override {
    // h = x + attention(norm(x)); out = h + feed_forward(norm(h)), with the residual stream
    // threaded through the norms (their backward adds its gradient; see kernels/ops.h).
    using kernels::InputRecipe;
    auto [x_through, attn_in] = kernels::rms_norm_residual(x, attention_norm->weight, attention_norm->eps());
    const auto attn_recipe = recompute_elementwise
                                 ? InputRecipe::rms_norm(x_through, attention_norm->weight, attention_norm->eps())
                                 : InputRecipe{};
    auto [h, ffn_in] = kernels::add_rms_norm(x_through, attention->forward(attn_in, *rope_, attn_recipe),
                                            ffn_norm->weight, ffn_norm->eps());
    const auto ffn_recipe =
        recompute_elementwise ? InputRecipe::rms_norm(h, ffn_norm->weight, ffn_norm->eps()) : InputRecipe{};
    return h + feed_forward->forward(ffn_in, ffn_recipe);
  }

  int64_t layer_id;
  // activation_checkpoint's "op" policy: the block keeps its matmul and attention outputs and
  // recomputes the norms' outputs and SwiGLU's in the backward.
  bool recompute_elementwise = false;
  std::shared_ptr<Attention> attention;
  std::shared_ptr<FeedForward> feed_forward;
  std::shared_ptr<RMSNorm> attention_norm, ffn_norm;

 private:
  std::shared_ptr<const RotaryTables> rope_;
};

class HeadUnit : public Unit {
 public:
  HeadUnit(const ModelArgs& a, const at::TensorOptions& o, std::shared_ptr<EmbeddingUnit> tied_to) {
    norm = register_module("norm", std::make_shared<RMSNorm>(a.dim, a.norm_eps, o));
    if (tied_to)
      tied_ = std::move(tied_to);
    else
      output = register_module("output", std::make_shared<Projection>(a.dim, a.vocab_size, o));
  }
  const at::Tensor& weight() const { return output ? output->weight : tied_->weight; }
  at::Tensor logits(const at::Tensor& x) const { return at::linear(norm->forward(x), weight().to(x.scalar_type())); }
  // The loss is taken in fp32 (or fp64) whatever the compute dtype.
  at::Tensor forward(const at::Tensor& x, const UnitBatch& batch) override {
    return kernels::linear_cross_entropy(norm->forward(x), weight(), batch.targets);
  }

  std::shared_ptr<RMSNorm> norm;
  std::shared_ptr<Projection> output;  // null when tied to the embedding

 private:
  std::shared_ptr<EmbeddingUnit> tied_;
};

void trunc_normal_(at::Tensor& t, double std, double a, double b, at::Generator& gen) {
  // Resample the out-of-range entries: a truncated normal without bias at the cut.
  torch::NoGradGuard no_grad;
  t.normal_(0.0, std, gen);
  for (int i = 0; i < 100; ++i) {
    auto out = (t < a).logical_or(t > b);
    if (!out.any().item<bool>()) return;
    auto fresh = torch::empty_like(t).normal_(0.0, std, gen);
    t.copy_(at::where(out, fresh, t));
  }
  t.clamp_(a, b);
}

}  // namespace

RotaryTables make_rotary_tables(const ModelArgs& a, const at::TensorOptions& options) {
  // Computed like Hugging Face's reference (fp32 unless the model is fp64), so logits agree.
  const auto dtype = options.dtype() == at::kDouble ? at::kDouble : at::kFloat;
  auto cpu = at::TensorOptions().dtype(dtype);
  const auto hd = a.head_dim();
  auto inv_freq = 1.0 / at::pow(a.rope_theta, at::arange(0, hd, 2, at::kLong).to(dtype) / static_cast<double>(hd));
  if (a.rope_scaling) {
    const auto& s = *a.rope_scaling;
    const double low_wavelen = s.original_max_position_embeddings / s.low_freq_factor;
    const double high_wavelen = s.original_max_position_embeddings / s.high_freq_factor;
    auto wavelen = 2.0 * M_PI / inv_freq;
    auto scaled = at::where(wavelen > low_wavelen, inv_freq / s.factor, inv_freq);
    auto smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) /
                  (s.high_freq_factor - s.low_freq_factor);
    auto smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled;
    auto medium = (wavelen >= high_wavelen).logical_and(wavelen <= low_wavelen);
    inv_freq = at::where(medium, smoothed, scaled);
  }
  auto positions = at::arange(a.max_seq_len, cpu);
  auto angles = at::outer(positions, inv_freq);
  auto device = options.device();
  return {angles.cos().to(device), angles.sin().to(device)};
}

Llama3Model::Llama3Model(const ModelArgs& args, const at::TensorOptions& options,
                         const std::function<bool(size_t)>& materialize)
    : args_(args) {
  args_.validate();
  auto options_of = [&](size_t unit) {
    return !materialize || materialize(unit) ? options : options.device(at::kMeta);
  };
  auto rope = std::make_shared<const RotaryTables>(make_rotary_tables(args_, options));
  auto embedding = register_module("tok_embeddings", std::make_shared<EmbeddingUnit>(args_, options_of(0)));
  units_.push_back(embedding);
  torch::nn::ModuleList layers;
  for (int64_t i = 0; i < args_.n_layers; ++i) {
    auto block = std::make_shared<TransformerBlock>(args_, i, rope, options_of(static_cast<size_t>(i) + 1));
    layers->push_back(block);
    units_.push_back(block);
  }
  register_module("layers", layers);
  auto head = std::make_shared<HeadUnit>(args_, options_of(units_.size()), args_.tie_embeddings ? embedding : nullptr);
  register_module("norm", head->norm);
  if (head->output) register_module("output", head->output);
  units_.push_back(head);
}

void Llama3Model::set_compute_dtype(at::ScalarType dtype) {
  dynamic_cast<EmbeddingUnit&>(*units_.front()).compute_dtype = dtype;
}

void Llama3Model::recompute_elementwise(bool on) {
  for (auto& unit : units_)
    if (auto* block = dynamic_cast<TransformerBlock*>(unit.get())) block->recompute_elementwise = on;
}

at::Tensor head_logits(Unit& head, const at::Tensor& hidden) {
  return dynamic_cast<HeadUnit&>(head).logits(hidden);
}

at::Tensor Llama3Model::logits(const at::Tensor& tokens) {
  UnitBatch batch{tokens, {}};
  at::Tensor h;
  for (size_t i = 0; i + 1 < units_.size(); ++i) h = units_[i]->forward(h, batch);
  return head_logits(*units_.back(), h);
}

at::Tensor Llama3Model::loss(const UnitBatch& batch) {
  at::Tensor h;
  for (auto& u : units_) h = u->forward(h, batch);
  return h;
}

void Llama3Model::init_weights(uint64_t seed) {
  torch::NoGradGuard no_grad;
  at::Generator gen;
  auto unit_generator = [&](size_t unit) {
    gen = at::make_generator<at::CPUGeneratorImpl>(seed * 1000003ULL + unit);
  };
  auto init = [&](at::Tensor& w, double std, double cutoff) {
    if (w.is_meta()) return;
    auto host = torch::empty(w.sizes(), w.options().device(at::kCPU));
    trunc_normal_(host, std, -cutoff, cutoff, gen);
    w.copy_(host);
  };
  auto& emb = dynamic_cast<EmbeddingUnit&>(*units_.front()).weight;
  unit_generator(0);
  if (!emb.is_meta()) {
    auto host = torch::empty(emb.sizes(), emb.options().device(at::kCPU)).normal_(0.0, 1.0, gen);
    emb.copy_(host);
  }
  for (size_t i = 1; i + 1 < units_.size(); ++i) {
    auto& b = dynamic_cast<TransformerBlock&>(*units_[i]);
    unit_generator(i);
    // Depth-scaled init of the projections that write into the residual stream.
    const double depth_std = 0.02 / std::sqrt(2.0 * static_cast<double>(b.layer_id + 1));
    init(b.attention->wq->weight, 0.02, 2.0);
    init(b.attention->wk->weight, 0.02, 2.0);
    init(b.attention->wv->weight, 0.02, 2.0);
    init(b.attention->wo->weight, depth_std, 2.0);
    init(b.feed_forward->w1->weight, 0.02, 2.0);
    init(b.feed_forward->w2->weight, depth_std, 2.0);
    init(b.feed_forward->w3->weight, depth_std, 2.0);
    b.attention_norm->weight.fill_(1.0);
    b.ffn_norm->weight.fill_(1.0);
  }
  auto& head = dynamic_cast<HeadUnit&>(*units_.back());
  unit_generator(units_.size() - 1);
  head.norm->weight.fill_(1.0);
  if (head.output) {
    const double std = 1.0 / std::sqrt(static_cast<double>(args_.dim));
    init(head.output->weight, std, 3.0 * std);
  }
}

}  // namespace troupe::models::llama3
