#include "models/common/decoder.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <cmath>

#include "kernels/attention.h"
#include "kernels/ops.h"
#include "kernels/vocab_parallel_loss.h"
#include "models/context_parallel.h"
#include "models/common/layers.h"
#include "models/common/moe.h"

namespace troupe::models {

namespace {

// Self-attention over a block's normed input: grouped-query or multi-head latent.
class AttentionModule : public torch::nn::Module {
 public:
  // `recipe`: how x is recomputed, when the projections are not to keep it.
  virtual at::Tensor forward(const at::Tensor& x, const RotaryTables& rope, const UnitBatch& batch,
                             const kernels::InputRecipe& recipe) const = 0;
  // Initialisation (torchtitan's): input projections at 0.02, the output at `out_std`, norms at one.
  virtual void init(const std::function<void(at::Tensor&, double)>& normal, double out_std) = 0;
  // Tensor parallelism over `group` (DecoderModel::apply_tensor_parallel checks the family first).
  virtual void shard(RankGroup& group) = 0;
  // Context parallelism (DecoderModel::apply_context_parallel): null without it.
  const ContextParallel* cp = nullptr;
  // Asynchronous tensor parallelism: the projections beside the sequence's gather and scatter
  // run as collective matmuls (models/rank_group.h). Latent attention keeps the plain form.
  bool async_tp = false;
};

// Attention of q [B, S, H, D] over k, v [B, S, Hkv, *] as the batch's mask says: causal over the
// row (scaled_dot_product_attention's fused kernels), causal within each document, or over the
// context-parallel group. `scale` unset: 1/sqrt(D).
at::Tensor attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, std::optional<double> scale,
                  const UnitBatch& batch, const ContextParallel* cp) {
  const double s = scale ? *scale : 1.0 / std::sqrt(static_cast<double>(q.size(3)));
  if (cp) return context_parallel_attention(q, k, v, batch, s, *cp);
  if (batch.attention_segments.size() == 1 && kernels::fused_attention_fits(q, k, v))
    return kernels::segment_attention(q, k, v, batch.attention_segments[0], s);
  if (batch.documents.defined()) {
    const auto positions = batch.positions.defined() ? batch.positions
                                                     : at::arange(q.size(1), q.options().dtype(at::kLong));
    return kernels::masked_attention(q, k, v, {positions, positions, batch.documents, batch.documents}, s);
  }
  // Grouped-query attention inside SDPA (each kv head serves n_heads/n_kv_heads consecutive
  // q heads) instead of materialising the repeated k and v.
  return at::scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), std::nullopt, 0.0,
                                          /*is_causal=*/true, scale, /*enable_gqa=*/k.size(2) != q.size(2))
      .transpose(1, 2);
}

// Rows of the rotary tables for these tokens' positions; without positions the first S rows.
std::pair<at::Tensor, at::Tensor> rotary_rows(const RotaryTables& rope, const at::Tensor& positions) {
  if (!positions.defined()) return {rope.cos, rope.sin};
  return {rope.cos.index_select(0, positions), rope.sin.index_select(0, positions)};
}

class Attention : public AttentionModule {
 public:
  Attention(const DecoderArgs& a, const at::TensorOptions& o, const kernels::WeightServices* s)
      : services(s), n_heads_(a.n_heads), n_kv_heads_(a.n_kv_heads), head_dim_(a.head_dim) {
    wq = register_module("wq", std::make_shared<Projection>(a.dim, n_heads_ * head_dim_, o, s));
    wk = register_module("wk", std::make_shared<Projection>(a.dim, n_kv_heads_ * head_dim_, o, s));
    wv = register_module("wv", std::make_shared<Projection>(a.dim, n_kv_heads_ * head_dim_, o, s));
    wo = register_module("wo", std::make_shared<Projection>(n_heads_ * head_dim_, a.dim, o, s));
    if (a.qk_norm) {
      q_norm = register_module("q_norm", std::make_shared<RMSNorm>(head_dim_, a.norm_eps, o, s));
      k_norm = register_module("k_norm", std::make_shared<RMSNorm>(head_dim_, a.norm_eps, o, s));
    }
  }

  // Under tensor parallelism x is this rank's part of the sequence and the projections hold this
  // rank's heads: the whole sequence is gathered for them (and kept), and wo's partial sums are
  // added up over the ranks as each takes its part of the sequence back.
  at::Tensor forward(const at::Tensor& x_in, const RotaryTables& rope, const UnitBatch& batch,
                     const kernels::InputRecipe& recipe_in) const override {
    auto qkv = project_whole_sequence(x_in, {wq->weight, wk->weight, wv->weight}, tp, async_tp, recipe_in, services);
    const auto B = qkv[0].size(0), S = qkv[0].size(1);
    auto q = qkv[0].view({B, S, n_heads_, head_dim_});
    auto k = qkv[1].view({B, S, n_kv_heads_, head_dim_});
    if (q_norm) {
      q = q_norm->forward(q);
      k = k_norm->forward(k);
    }
    const auto [cos, sin] = rotary_rows(rope, batch.positions);
    q = kernels::rotary(q, cos, sin);
    k = kernels::rotary(k, cos, sin);
    auto v = qkv[2].view({B, S, n_kv_heads_, head_dim_});
    auto out = attend(q, k, v, std::nullopt, batch, cp).reshape({B, S, n_heads_ * head_dim_});
    return project_to_parts(out, wo->weight, tp, async_tp, {}, services);
  }

  // Tensor parallelism: this rank's heads (q's and k/v's, consecutive, so each q head keeps its
  // k/v head) in wq, wk, wv's rows and wo's columns. With fewer kv heads than ranks, the one kv
  // head its q heads share (the sharding plan gives it to each of them).
  void shard(RankGroup& group) override {
    const int64_t n = group.size();
    n_heads_ /= n;
    n_kv_heads_ = n_kv_heads_ % n == 0 ? n_kv_heads_ / n : 1;
    tp = &group;
  }

  void init(const std::function<void(at::Tensor&, double)>& normal, double out_std) override {
    for (auto* w : {&wq->weight, &wk->weight, &wv->weight}) normal(*w, 0.02);
    normal(wo->weight, out_std);
    if (q_norm) {
      q_norm->weight.fill_(1.0);
      k_norm->weight.fill_(1.0);
    }
  }

  std::shared_ptr<Projection> wq, wk, wv, wo;
  std::shared_ptr<RMSNorm> q_norm, k_norm;  // null without qk_norm
  const kernels::WeightServices* services;
  RankGroup* tp = nullptr;  // set by shard()

 private:
  int64_t n_heads_, n_kv_heads_, head_dim_;
};

// Multi-head latent attention (DeepSeek V2/V3), torchtitan's names: q from x (wq) or from a
// normed low-rank latent (wq_a, q_norm, wq_b); k and v from one latent of x (wkv_a: kv_lora_rank
// latent, then the rotary part of k that all heads share), normed (kv_norm) and expanded per head
// (wkv_b: each head's k without position, then its v). Rotary parts use Meta's interleaved pairs,
// as DeepSeek's checkpoints store them.
class LatentAttention : public AttentionModule {
 public:
  // The latents' norms keep DeepSeek's own epsilon whatever norm_eps is (its reference code and
  // HF's DeepseekV3 build them without one).
  static constexpr double kLatentNormEps = 1e-6;
  LatentAttention(const DecoderArgs& a, const at::TensorOptions& o, const kernels::WeightServices* s)
      : services(s), a_(a) {
    const auto qk = a.qk_nope_head_dim + a.qk_rope_head_dim;
    if (a.q_lora_rank > 0) {
      wq_a = register_module("wq_a", std::make_shared<Projection>(a.dim, a.q_lora_rank, o, s));
      q_norm = register_module("q_norm", std::make_shared<RMSNorm>(a.q_lora_rank, kLatentNormEps, o, s));
      wq_b = register_module("wq_b", std::make_shared<Projection>(a.q_lora_rank, a.n_heads * qk, o, s));
    } else {
      wq = register_module("wq", std::make_shared<Projection>(a.dim, a.n_heads * qk, o, s));
    }
    wkv_a = register_module("wkv_a", std::make_shared<Projection>(a.dim, a.kv_lora_rank + a.qk_rope_head_dim, o, s));
    kv_norm = register_module("kv_norm", std::make_shared<RMSNorm>(a.kv_lora_rank, kLatentNormEps, o, s));
    wkv_b = register_module(
        "wkv_b", std::make_shared<Projection>(a.kv_lora_rank, a.n_heads * (a.qk_nope_head_dim + a.v_head_dim), o, s));
    wo = register_module("wo", std::make_shared<Projection>(a.n_heads * a.v_head_dim, a.dim, o, s));
  }

  at::Tensor forward(const at::Tensor& x, const RotaryTables& rope, const UnitBatch& batch,
                     const kernels::InputRecipe& recipe) const override {
    // Under tensor parallelism: the whole sequence, this rank's heads.
    auto first = project_whole_sequence(x, {wq ? wq->weight : wq_a->weight, wkv_a->weight}, tp, false, recipe, services);
    const auto B = first[0].size(0), S = first[0].size(1), H = a_.n_heads / (tp ? tp->size() : 1);
    const auto nope = a_.qk_nope_head_dim, pe = a_.qk_rope_head_dim, latent = a_.kv_lora_rank;
    auto q = wq ? first[0] : wq_b->forward(q_norm->forward(first[0]));
    q = q.view({B, S, H, nope + pe});
    const auto [cos, sin] = rotary_rows(rope, batch.positions);
    const auto q_pe = kernels::rotary(q.narrow(-1, nope, pe).contiguous(), cos, sin);
    const auto k_pe = kernels::rotary(first[1].narrow(-1, latent, pe).contiguous().view({B, S, 1, pe}), cos, sin);
    const auto kv = wkv_b->forward(kv_norm->forward(first[1].narrow(-1, 0, latent))).view({B, S, H, nope + a_.v_head_dim});
    const auto query = at::cat({q.narrow(-1, 0, nope), q_pe}, -1);
    const auto key = at::cat({kv.narrow(-1, 0, nope), k_pe.expand({B, S, H, pe})}, -1);
    const auto value = kv.narrow(-1, nope, a_.v_head_dim);
    auto out = attend(query, key, value, a_.attention_scale(), batch, cp);
    return project_to_parts(out.reshape({B, S, H * a_.v_head_dim}), wo->weight, tp, false, {}, services);
  }

  void init(const std::function<void(at::Tensor&, double)>& normal, double out_std) override {
    for (const auto& p : {wq, wq_a, wq_b, wkv_a, wkv_b})
      if (p) normal(p->weight, 0.02);
    normal(wo->weight, out_std);
    if (q_norm) q_norm->weight.fill_(1.0);
    kv_norm->weight.fill_(1.0);
  }

  // Tensor parallelism: this rank's heads in wq's (or wq_b's) and wkv_b's rows and wo's columns;
  // the latents (wq_a, wkv_a and their norms) are whole on every rank, each rank's gradient of
  // them partial (summed with the norms').
  void shard(RankGroup& group) override { tp = &group; }

  std::shared_ptr<Projection> wq, wq_a, wq_b, wkv_a, wkv_b, wo;  // wq, or wq_a and wq_b
  std::shared_ptr<RMSNorm> q_norm, kv_norm;
  const kernels::WeightServices* services;
  RankGroup* tp = nullptr;  // set by shard()

 private:
  DecoderArgs a_;
};

class EmbeddingUnit : public Unit {
 public:
  EmbeddingUnit(const DecoderArgs& a, const at::TensorOptions& o)
      : weight(register_parameter("weight", torch::empty({a.vocab_size, a.dim}, o))),
        compute_dtype(o.dtype().toScalarType()) {}
  // Under tensor parallelism the table holds this rank's rows of the vocabulary: other tokens
  // look up zeros, and the ranks' lookups are added up as each takes its part of the sequence.
  at::Tensor forward(const at::Tensor&, const UnitBatch& batch) override { return lookup(batch.tokens, compute_dtype); }
  // `tokens` [B, S] embedded in `dtype`: [B, S / tp, dim] under tensor parallelism.
  at::Tensor lookup(const at::Tensor& tokens, at::ScalarType dtype) const {
    if (!tp) return at::embedding(weight, tokens).to(dtype);
    const auto rows = weight.size(0), first = rows * tp->rank();
    const auto local = tokens - first;
    const auto mine = local.ge(0).logical_and(local.lt(rows)).unsqueeze(-1);
    const auto looked_up = at::embedding(weight, local.clamp(0, rows - 1)) * mine.to(weight.scalar_type());
    return scatter_sequence_sum(looked_up.to(dtype), *tp);
  }
  // A sharded table's rows are not the unit's output: no row-wise gradient then.
  at::Tensor lookup_table() const override { return tp ? at::Tensor() : weight; }
  at::Tensor weight;
  RankGroup* tp = nullptr;  // tensor parallelism: the table holds this rank's rows
  // Every later unit computes in the dtype of the activations it receives, so this one choice
  // sets the model's compute precision.
  at::ScalarType compute_dtype;
};

class TransformerBlock : public Unit {
 public:
  TransformerBlock(const DecoderArgs& a, int64_t layer_id, std::shared_ptr<const RotaryTables> rope,
                   const at::TensorOptions& o, const kernels::WeightServices* s)
      : layer_id(layer_id), rope_(std::move(rope)) {
    if (a.mla())
      attention = register_module("attention", std::make_shared<LatentAttention>(a, o, s));
    else
      attention = register_module("attention", std::make_shared<Attention>(a, o, s));
    if (a.moe_block(layer_id))
      moe = register_module("moe", std::make_shared<MoE>(a, o, s));
    else
      feed_forward = register_module("feed_forward", std::make_shared<FeedForward>(a.dim, a.ffn_hidden_dim, o, s));
    attention_norm = register_module("attention_norm", std::make_shared<RMSNorm>(a.dim, a.norm_eps, o, s));
    ffn_norm = register_module("ffn_norm", std::make_shared<RMSNorm>(a.dim, a.norm_eps, o, s));
  }
  at::Tensor forward(const at::Tensor& x, const UnitBatch& batch) override {
    // h = x + attention(norm(x)); out = h + feed_forward(norm(h)), with the residual stream
    // threaded through the norms (their backward adds its gradient; see kernels/ops.h).
    using kernels::InputRecipe;
    auto [x_through, attn_in] = kernels::rms_norm_residual(x, attention_norm->weight, attention_norm->eps(),
                                                                attention_norm->services);
    const auto attn_recipe = recompute_elementwise
                                 ? InputRecipe::rms_norm(x_through, attention_norm->weight, attention_norm->eps())
                                 : InputRecipe{};
    auto [h, ffn_in] = kernels::add_rms_norm(x_through, attention->forward(attn_in, *rope_, batch, attn_recipe),
                                            ffn_norm->weight, ffn_norm->eps(), ffn_norm->services);
    const auto ffn_recipe =
        recompute_elementwise ? InputRecipe::rms_norm(h, ffn_norm->weight, ffn_norm->eps()) : InputRecipe{};
    if (moe) return h + moe->forward(ffn_in, batch, layer_id, ffn_recipe);
    return h + feed_forward->forward(ffn_in, ffn_recipe);
  }

  int64_t layer_id;
  // activation_checkpoint's "op" policy: the block keeps its matmul and attention outputs and
  // recomputes the norms' outputs and SwiGLU's in the backward.
  bool recompute_elementwise = false;
  std::shared_ptr<AttentionModule> attention;
  std::shared_ptr<FeedForward> feed_forward;  // null in a MoE block
  std::shared_ptr<MoE> moe;                   // null in a dense block
  std::shared_ptr<RMSNorm> attention_norm, ffn_norm;

 private:
  std::shared_ptr<const RotaryTables> rope_;
};

// A multi-token prediction block (DeepSeek V3, torchtitan's names under mtp_layers.<k>): the
// last block's kind over eh_proj([enorm(embedding); hnorm(previous)]), normed by mtp_norm for the
// shared output head.
class MtpBlock : public TransformerBlock {
 public:
  MtpBlock(const DecoderArgs& a, int64_t layer_id, std::shared_ptr<const RotaryTables> rope, const at::TensorOptions& o,
           const kernels::WeightServices* s)
      : TransformerBlock(a, layer_id, std::move(rope), o, s) {
    enorm = register_module("enorm", std::make_shared<RMSNorm>(a.dim, a.norm_eps, o, s));
    hnorm = register_module("hnorm", std::make_shared<RMSNorm>(a.dim, a.norm_eps, o, s));
    eh_proj = register_module("eh_proj", std::make_shared<Projection>(2 * a.dim, a.dim, o, s));
    mtp_norm = register_module("mtp_norm", std::make_shared<RMSNorm>(a.dim, a.norm_eps, o, s));
  }
  // The block's output (before mtp_norm): what the next prediction block continues from.
  at::Tensor predict(const at::Tensor& previous, const at::Tensor& embedded, const UnitBatch& batch) {
    return forward(eh_proj->forward(at::cat({enorm->forward(embedded), hnorm->forward(previous)}, -1)), batch);
  }
  std::shared_ptr<RMSNorm> enorm, hnorm, mtp_norm;
  std::shared_ptr<Projection> eh_proj;
};

class HeadUnit : public Unit {
 public:
  HeadUnit(const DecoderArgs& a, const at::TensorOptions& o, std::shared_ptr<EmbeddingUnit> embedding,
           std::shared_ptr<const RotaryTables> rope, const kernels::WeightServices* s)
      : embedding_(std::move(embedding)), services_(s), mtp_loss_weight_(a.mtp_loss_weight) {
    norm = register_module("norm", std::make_shared<RMSNorm>(a.dim, a.norm_eps, o, s));
    if (!a.tie_embeddings) output = register_module("output", std::make_shared<Projection>(a.dim, a.vocab_size, o, s));
    for (int64_t k = 0; k < a.mtp_layers; ++k) {
      auto block = std::make_shared<MtpBlock>(a, a.n_layers + k, rope, o, s);
      mtp->push_back(block);
      mtp_blocks.push_back(block);
    }
    if (a.mtp_layers > 0) register_module("mtp_layers", mtp);
  }
  const at::Tensor& weight() const { return output ? output->weight : embedding_->weight; }
  at::Tensor logits(const at::Tensor& x) const { return at::linear(norm->forward(x), weight().to(x.scalar_type())); }
  // The loss is taken in fp32 (or fp64) whatever the compute dtype. Prediction block k sees the
  // sequence's first S - k positions: position i the token i + k and the state of position i one
  // block earlier, and is scored against the target i + k (causal attention makes the cut exact).
  at::Tensor forward(const at::Tensor& x, const UnitBatch& batch) override {
    auto loss = cross_entropy(norm->forward(x), batch.targets);
    if (mtp_blocks.empty()) return loss;
    if (tp_ || batch.all_tokens.defined()) return with_split_predictions(loss, x, batch);
    const auto S = x.size(1);
    at::Tensor previous = x, sum;
    int64_t used = 0;
    for (size_t k = 0; k < mtp_blocks.size(); ++k) {
      const int64_t ahead = static_cast<int64_t>(k) + 1, n = S - ahead;
      if (n <= 0) break;
      UnitBatch part{.tokens = batch.tokens.narrow(1, ahead, n),
                     .targets = batch.targets.narrow(1, ahead, n),
                     .positions = batch.positions.defined() ? batch.positions.narrow(0, 0, n) : at::Tensor(),
                     .aux = batch.aux,
                     .loss_scale = batch.loss_scale,
                     .documents = batch.documents.defined() ? batch.documents.narrow(1, 0, n) : at::Tensor()};
      previous = mtp_blocks[k]->predict(previous.narrow(1, 0, n), embedding_->lookup(part.tokens, x.scalar_type()), part);
      const auto l = cross_entropy(mtp_blocks[k]->mtp_norm->forward(previous), part.targets);
      sum = sum.defined() ? sum + l : l;
      ++used;
    }
    return with_mtp_loss(loss, sum, used, batch);
  }

  // The mean cross-entropy of normed states `h` over the targets that are not negative; under
  // tensor parallelism the loss parallel's (the whole sequence, this rank's rows of the vocabulary),
  // or over each chunk's logits gathered whole when it is off.
  at::Tensor cross_entropy(const at::Tensor& h, const at::Tensor& targets) const {
    if (!tp_) return kernels::linear_cross_entropy(h, weight(), targets, services_);
    return kernels::vocab_parallel_cross_entropy(gather_sequence(h, *tp_), weight(), targets,
                                                 weight().size(0) * tp_->rank(), reduce_, gather_, services_);
  }

  // Prediction blocks under tensor or context parallelism: the sequence keeps its length, so that
  // its parts stay equal. Block k's tokens and targets are those k + 1 positions ahead of each of
  // this rank's positions; the positions past the row's end are not scored (targets ignored) nor
  // routed by a MoE block. Causal attention leaves the scored positions' states those of the cut
  // sequence; each rank's mean is weighted by its share of the scored positions, so that the
  // average over the cp ranks is the mean over all of them.
  at::Tensor with_split_predictions(const at::Tensor& loss, const at::Tensor& x, const UnitBatch& batch) {
    const auto& tokens = batch.all_tokens.defined() ? batch.all_tokens : batch.tokens;
    const auto& targets = batch.all_targets.defined() ? batch.all_targets : batch.targets;
    const auto S = tokens.size(1);
    const auto host = batch.host_positions.defined() ? batch.host_positions : at::arange(S, at::kLong);
    const auto positions = batch.positions.defined() ? batch.positions : at::arange(S, tokens.options());
    at::Tensor previous = x, sum;
    int64_t used = 0;
    for (size_t k = 0; k < mtp_blocks.size(); ++k) {
      const int64_t ahead = static_cast<int64_t>(k) + 1, n = S - ahead;
      if (n <= 0) break;
      const auto source = (positions + ahead).clamp_max(S - 1);
      const auto scored = (positions + ahead).lt(S);
      UnitBatch part = batch;
      part.tokens = tokens.index_select(1, source);
      part.targets = targets.index_select(1, source).masked_fill(scored.logical_not(), kIgnored);
      const auto rows = at::nonzero(host + ahead < S).reshape({-1});  // on the host: no device sync
      part.scored_rows = rows.to(tokens.device());
      previous = mtp_blocks[k]->predict(previous, embedding_->lookup(part.tokens, x.scalar_type()), part);
      const auto share = static_cast<double>(rows.numel()) * static_cast<double>(S) /
                         (static_cast<double>(host.numel()) * static_cast<double>(n));
      const auto l = cross_entropy(mtp_blocks[k]->mtp_norm->forward(previous), part.targets) * share;
      sum = sum.defined() ? sum + l : l;
      ++used;
    }
    return with_mtp_loss(loss, sum, used, batch);
  }

  at::Tensor with_mtp_loss(const at::Tensor& loss, const at::Tensor& sum, int64_t used, const UnitBatch& batch) const {
    if (!used) return loss;
    const auto mtp_loss = sum / static_cast<double>(used);
    if (batch.aux) batch.aux->add("mtp.loss", mtp_loss);
    return loss + mtp_loss_weight_ * mtp_loss;
  }

  // Tensor parallelism: the output holds this rank's rows of the vocabulary (a tied one is the
  // embedding's table, sharded with it). Without `loss_parallel`, each chunk's logits are gathered
  // whole for the loss.
  void shard(RankGroup& group, bool loss_parallel) {
    tp_ = &group;
    reduce_ = [g = &group](at::Tensor& t, bool max) { g->all_reduce(t, max); };
    if (!loss_parallel) gather_ = [g = &group](const at::Tensor& t) { return g->all_gather(t); };
  }

  std::shared_ptr<RMSNorm> norm;
  std::shared_ptr<Projection> output;  // null when tied to the embedding
  torch::nn::ModuleList mtp;
  std::vector<std::shared_ptr<MtpBlock>> mtp_blocks;

 private:
  // A target the cross-entropy skips (ATen's default ignore_index; Troupe's kernels skip any
  // negative one).
  static constexpr int64_t kIgnored = -100;
  RankGroup* tp_ = nullptr;
  kernels::GroupAllReduce reduce_;
  kernels::GroupAllGather gather_;  // set when loss parallel is off
  std::shared_ptr<EmbeddingUnit> embedding_;  // its table is the output when tied, and MTP's input
  const kernels::WeightServices* services_;
  double mtp_loss_weight_;
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

RotaryTables make_rotary_tables(const DecoderArgs& a, int64_t max_seq_len, const at::TensorOptions& options) {
  // Computed like Hugging Face's reference (fp32 unless the model is fp64), so logits agree.
  const auto dtype = options.dtype() == at::kDouble ? at::kDouble : at::kFloat;
  auto cpu = at::TensorOptions().dtype(dtype);
  const auto hd = a.rotary_dim();
  auto inv_freq = 1.0 / at::pow(a.rope_theta, at::arange(0, hd, 2, at::kLong).to(dtype) / static_cast<double>(hd));
  if (a.rope_yarn_factor > 1) {
    // YaRN: pair i keeps its frequency up to the pair that turns beta_fast times over the original
    // context, takes it divided by the factor from the one that turns beta_slow times, and blends
    // linearly between (the cut-offs rounded outwards, as DeepSeek's and HF's).
    const double original = static_cast<double>(a.rope_original_max_positions);
    auto pair_of = [&](double rotations) {
      return static_cast<double>(hd) * std::log(original / (rotations * 2.0 * M_PI)) / (2.0 * std::log(a.rope_theta));
    };
    const double low = std::max(std::floor(pair_of(a.rope_beta_fast)), 0.0);
    double high = std::min(std::ceil(pair_of(a.rope_beta_slow)), static_cast<double>(hd - 1));
    if (high == low) high += 0.001;
    const auto ramp = ((at::arange(hd / 2, at::TensorOptions().dtype(dtype)) - low) / (high - low)).clamp(0, 1);
    inv_freq = inv_freq / a.rope_yarn_factor * ramp + inv_freq * (1 - ramp);
  }
  if (a.rope_scaling_factor > 0) {
    const double original = static_cast<double>(a.rope_original_max_positions);
    const double low_wavelen = original / a.rope_low_freq_factor;
    const double high_wavelen = original / a.rope_high_freq_factor;
    auto wavelen = 2.0 * M_PI / inv_freq;
    auto scaled = at::where(wavelen > low_wavelen, inv_freq / a.rope_scaling_factor, inv_freq);
    auto smooth = (original / wavelen - a.rope_low_freq_factor) / (a.rope_high_freq_factor - a.rope_low_freq_factor);
    auto smoothed = (1 - smooth) * scaled / a.rope_scaling_factor + smooth * scaled;
    auto medium = (wavelen >= high_wavelen).logical_and(wavelen <= low_wavelen);
    inv_freq = at::where(medium, smoothed, scaled);
  }
  auto positions = at::arange(max_seq_len, cpu);
  auto angles = at::outer(positions, inv_freq);
  auto device = options.device();
  return {angles.cos().to(device), angles.sin().to(device)};
}

DecoderModel::DecoderModel(const DecoderArgs& args, const at::TensorOptions& options, int64_t max_seq_len,
                           const std::function<bool(size_t)>& materialize)
    : args_(args) {
  args_.validate();
  auto options_of = [&](size_t unit) {
    return !materialize || materialize(unit) ? options : options.device(at::kMeta);
  };
  auto rope = std::make_shared<const RotaryTables>(make_rotary_tables(args_, max_seq_len, options));
  auto embedding = register_module("tok_embeddings", std::make_shared<EmbeddingUnit>(args_, options_of(0)));
  units_.push_back(embedding);
  torch::nn::ModuleList layers;
  for (int64_t i = 0; i < args_.n_layers; ++i) {
    auto block = std::make_shared<TransformerBlock>(args_, i, rope, options_of(static_cast<size_t>(i) + 1),
                                                    services_.get());
    layers->push_back(block);
    units_.push_back(block);
  }
  register_module("layers", layers);
  auto head = std::make_shared<HeadUnit>(args_, options_of(units_.size()), embedding, rope, services_.get());
  register_module("norm", head->norm);
  if (head->output) register_module("output", head->output);
  if (!head->mtp_blocks.empty()) register_module("mtp_layers", head->mtp);
  units_.push_back(head);
}

void DecoderModel::set_compute_dtype(at::ScalarType dtype) {
  dynamic_cast<EmbeddingUnit&>(*units_.front()).compute_dtype = dtype;
}

void DecoderModel::recompute_elementwise(bool on) {
  for (auto& unit : units_)
    if (auto* block = dynamic_cast<TransformerBlock*>(unit.get())) block->recompute_elementwise = on;
}

std::vector<std::pair<size_t, size_t>> DecoderModel::borrowed_units() const {
  // A tied output is the embedding's table; prediction blocks embed tokens with it.
  if (!args_.tie_embeddings && args_.mtp_layers == 0) return {};
  return {{units_.size() - 1, 0}};
}

void DecoderModel::apply_tensor_parallel(RankGroupPtr group, TensorParallelStyle style) {
  if (const auto problem = tensor_parallel_problem(args_, group->size()); !problem.empty())
    throw std::invalid_argument(problem);
  tp_ = std::move(group);
  auto& g = *tp_;
  dynamic_cast<EmbeddingUnit&>(*units_.front()).tp = &g;
  auto shard_block = [&](TransformerBlock& b) {
    b.attention->shard(g);
    b.attention->async_tp = style.asynchronous;
    if (b.feed_forward) {
      b.feed_forward->tp = &g;
      b.feed_forward->async_tp = style.asynchronous;
    }
    if (b.moe) b.moe->tp = &g;
  };
  for (size_t i = 1; i + 1 < units_.size(); ++i) shard_block(dynamic_cast<TransformerBlock&>(*units_[i]));
  auto& head = dynamic_cast<HeadUnit&>(*units_.back());
  for (auto& m : head.mtp_blocks) shard_block(*m);
  head.shard(g, style.loss_parallel);
}

std::string tensor_parallel_problem(const DecoderArgs& a, int64_t tp) {
  if (tp <= 1) return {};
  const auto degree = "parallelism.tensor_parallel_degree = " + std::to_string(tp);
  auto must_divide = [&](const char* what, int64_t value) -> std::string {
    if (value % tp == 0) return {};
    return degree + " does not divide the model's " + what + " (" + std::to_string(value) + ")";
  };
  // Latent attention has no k/v heads of its own: its k and v come per head from the latent.
  // Fewer kv heads than ranks: each is held by the tp / n_kv_heads ranks whose q heads it serves.
  const auto kv_heads = a.mla() || (a.n_kv_heads < tp && tp % a.n_kv_heads == 0) ? 0 : a.n_kv_heads;
  if (kv_heads != 0 && kv_heads < tp)
    return degree + " is not a multiple of the model's n_kv_heads (" + std::to_string(kv_heads) +
           "): with fewer kv heads than ranks, each kv head is held by tp / n_kv_heads ranks";
  for (const auto& problem : {must_divide("n_heads", a.n_heads), must_divide("n_kv_heads", kv_heads),
                              must_divide("feed-forward hidden size", a.ffn_hidden_dim),
                              must_divide("moe_inter_dim", a.num_experts > 0 ? a.moe_inter_dim : 0),
                              must_divide("vocab_size", a.vocab_size)})
    if (!problem.empty()) return problem;
  return {};
}

void DecoderModel::apply_context_parallel(const ContextParallel& cp) {
  cp_ = std::make_unique<ContextParallel>(cp);
  for (size_t i = 1; i + 1 < units_.size(); ++i) dynamic_cast<TransformerBlock&>(*units_[i]).attention->cp = cp_.get();
  for (auto& m : dynamic_cast<HeadUnit&>(*units_.back()).mtp_blocks) m->attention->cp = cp_.get();
}

std::string expert_parallel_problem(const DecoderArgs& a, int64_t ep) {
  if (ep <= 1) return {};
  const auto degree = "parallelism.expert_parallel_degree = " + std::to_string(ep);
  if (a.num_experts == 0) return degree + ": the model has no routed experts to split (a dense model)";
  if (a.num_experts % ep != 0)
    return degree + " does not divide the model's " + std::to_string(a.num_experts) + " routed experts";
  return {};
}

void DecoderModel::apply_expert_parallel(RankGroupPtr group) {
  if (const auto problem = expert_parallel_problem(args_, group->size()); !problem.empty())
    throw std::invalid_argument(problem);
  ep_ = std::move(group);
  for (auto& unit : units_)
    if (auto* block = dynamic_cast<TransformerBlock*>(unit.get()); block && block->moe) block->moe->ep = ep_.get();
  for (auto& m : dynamic_cast<HeadUnit&>(*units_.back()).mtp_blocks)
    if (m->moe) m->moe->ep = ep_.get();
}

at::Tensor DecoderModel::logits(const at::Tensor& tokens) {
  if (tp_ || cp_ || ep_)
    throw std::logic_error("DecoderModel::logits: the model is split over ranks (tensor, context or expert parallelism)");
  UnitBatch batch{tokens, {}};  // reports nothing
  at::Tensor h;
  for (size_t i = 0; i + 1 < units_.size(); ++i) h = units_[i]->forward(h, batch);
  return dynamic_cast<HeadUnit&>(*units_.back()).logits(h);
}


void DecoderModel::balance_experts(const AuxValues& step) {
  if (args_.load_balance_coeff <= 0) return;
  torch::NoGradGuard no_grad;
  std::vector<TransformerBlock*> blocks;
  for (auto& unit : units_)
    if (auto* block = dynamic_cast<TransformerBlock*>(unit.get())) blocks.push_back(block);
  for (auto& m : dynamic_cast<HeadUnit&>(*units_.back()).mtp_blocks) blocks.push_back(m.get());
  for (auto* block : blocks) {
    if (!block->moe) continue;
    const auto it = step.values().find("moe.layers." + std::to_string(block->layer_id) + ".tokens_per_expert");
    if (it == step.values().end()) continue;  // another stage's block
    const auto load = it->second.to(block->moe->expert_bias.device(), at::kFloat);
    auto delta = at::sign(load.mean() - load) * args_.load_balance_coeff;
    block->moe->expert_bias.add_(delta - delta.mean());
  }
}

void DecoderModel::init_weights(uint64_t seed) {
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
  const double output_std = 1.0 / std::sqrt(static_cast<double>(args_.dim));
  if (args_.tie_embeddings) {
    // As torchtitan's, where the output's init overwrites the weight it shares: unit-normal
    // rows would make the first logits dim^0.5 times too large (losses of hundreds).
    init(emb, output_std, 3.0 * output_std);
  } else if (!emb.is_meta()) {
    auto host = torch::empty(emb.sizes(), emb.options().device(at::kCPU)).normal_(0.0, 1.0, gen);
    emb.copy_(host);
  }
  // Depth-scaled init of the projections that write into the residual stream; prediction blocks
  // take the last block's depth, as torchtitan's copies of its config.
  auto init_block = [&](TransformerBlock& b, int64_t depth) {
    const double depth_std = 0.02 / std::sqrt(2.0 * static_cast<double>(depth + 1));
    b.attention->init([&](at::Tensor& w, double std) { init(w, std, 2.0); }, depth_std);
    auto init_ffn = [&](FeedForward& f) {
      init(f.w1->weight, 0.02, 2.0);
      init(f.w2->weight, depth_std, 2.0);
      init(f.w3->weight, depth_std, 2.0);
    };
    if (b.feed_forward) init_ffn(*b.feed_forward);
    if (b.moe) {
      // torchtitan's: the router and the experts' w2, w3 depth-scaled, w1 at 0.02.
      init(b.moe->router->gate->weight, depth_std, 2.0);
      init(b.moe->experts->w1, 0.02, 2.0);
      init(b.moe->experts->w2, depth_std, 2.0);
      init(b.moe->experts->w3, depth_std, 2.0);
      if (b.moe->shared_experts) init_ffn(*b.moe->shared_experts);
      b.moe->expert_bias.zero_();
    }
    b.attention_norm->weight.fill_(1.0);
    b.ffn_norm->weight.fill_(1.0);
  };
  for (size_t i = 1; i + 1 < units_.size(); ++i) {
    auto& b = dynamic_cast<TransformerBlock&>(*units_[i]);
    unit_generator(i);
    init_block(b, b.layer_id);
  }
  auto& head = dynamic_cast<HeadUnit&>(*units_.back());
  unit_generator(units_.size() - 1);
  head.norm->weight.fill_(1.0);
  if (head.output) init(head.output->weight, output_std, 3.0 * output_std);
  for (auto& m : head.mtp_blocks) {
    init_block(*m, args_.n_layers - 1);
    init(m->eh_proj->weight, 0.02, 2.0);
    for (auto* norm : {&m->enorm, &m->hnorm, &m->mtp_norm}) (*norm)->weight.fill_(1.0);
  }
}

}  // namespace troupe::models
