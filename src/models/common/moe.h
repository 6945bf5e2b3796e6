// Mixture of experts in place of a block's feed-forward (torchtitan's MoE, DeepSeek V3's and
// Qwen3 MoE's routing): a router chooses top_k of num_experts SwiGLU experts per token, their
// outputs are weighted by the router's scores and added, with always-on shared experts beside
// them. Dropless: every token reaches every expert it chose. Parameter names are torchtitan's:
// moe.router.gate.weight [experts, dim], moe.experts.w1/w3 [experts, inter, dim],
// moe.experts.w2 [experts, dim, inter], moe.shared_experts.w{1,2,3}.weight; the buffer
// moe.expert_bias [experts] (auxiliary-loss-free balancing).
#pragma once
#include <torch/nn/module.h>

#include <functional>
#include <memory>
#include <string>

#include "models/common/decoder_args.h"
#include "kernels/moe_ops.h"
#include "kernels/ops.h"
#include "models/common/layers.h"
#include "models/rank_group.h"
#include "models/unit.h"

namespace troupe::models {

// Which experts each token goes to, and with what weight.
struct Routing {
  at::Tensor experts;  // [tokens, top_k] int64
  at::Tensor weights;  // [tokens, top_k] fp32: the chosen scores, normalised and scaled
  at::Tensor scores;   // [tokens, experts] fp32: softmax or sigmoid of the router's logits
  at::Tensor counts;   // [experts] int64: tokens per expert
};

// The routing of `logits` [tokens, experts] as `a` describes it; `bias` [experts] (may be
// undefined) shifts the choice but not the weights.
Routing route(const at::Tensor& logits, const at::Tensor& bias, const DecoderArgs& a);

// The load-balancing loss of one MoE block (Switch Transformer's, as Qwen3 MoE's): experts x
// sum over experts of (share of the top_k choices it got) x (its mean normalised score). 1 when
// balanced with top_k 1, top_k when balanced in general. With `sequences` > 1 the tokens are that
// many sequences of equal length, and the loss is the mean of each sequence's (DeepSeek V3's
// sequence-wise balance, in Switch's scale).
at::Tensor load_balancing_loss(const Routing& r, int64_t num_experts, int64_t sequences = 1);

class Router : public torch::nn::Module {
 public:
  Router(const DecoderArgs& a, const at::TensorOptions& o, const kernels::WeightServices* s) {
    gate = register_module("gate", std::make_shared<Projection>(a.dim, a.num_experts, o, s));
  }
  std::shared_ptr<Projection> gate;
};

class GroupedExperts : public torch::nn::Module {
 public:
  GroupedExperts(const DecoderArgs& a, const at::TensorOptions& o, const kernels::WeightServices* s)
      : w1(register_parameter("w1", at::empty({a.num_experts, a.moe_inter_dim, a.dim}, o))),
        w2(register_parameter("w2", at::empty({a.num_experts, a.dim, a.moe_inter_dim}, o))),
        w3(register_parameter("w3", at::empty({a.num_experts, a.moe_inter_dim, a.dim}, o))),
        services(s) {}
  // flat [tokens, dim] -> the copies' outputs [tokens * top_k, dim] grouped by expert
  // (kernels::grouped_swiglu).
  at::Tensor forward(const at::Tensor& flat, const kernels::Permutation& p, bool recompute_elementwise) const;
  at::Tensor w1, w2, w3;
  const kernels::WeightServices* services;
};

// Expert parallelism's dispatch and combine: the token copies of `flat` grouped by expert (`p`)
// go by all-to-all to the ranks of `group` holding their experts (rank r the r-th
// experts.size / group.size of them), through those experts, and back; returns the rows
// experts.forward would over all the experts. The counts per expert go first (one host sync).
// With `aux`, reports the rows this rank's experts computed and the bytes it sent and received,
// per ep rank ("ep.rank<r>.tokens", "ep.rank<r>.all_to_all_bytes": the forward's; the backward
// moves as many again). `while_dispatched` (may be empty) runs while the copies travel to
// their experts (the block's shared experts).
at::Tensor routed_over_ranks(const at::Tensor& flat, const kernels::Permutation& p, const GroupedExperts& experts,
                             bool recompute, RankGroup& group, AuxValues* aux,
                             const std::function<void()>& while_dispatched = {});

class MoE : public torch::nn::Module {
 public:
  MoE(const DecoderArgs& a, const at::TensorOptions& o, const kernels::WeightServices* s);

  // x: [batch, seq, dim]; `recipe` set: activation checkpointing's "op" policy (the experts and
  // shared experts keep their GEMM outputs and recompute the element-wise ops). With `batch.aux`, reports this block's tokens per expert
  // ("moe.layers.<layer>.tokens_per_expert") and, with aux_loss_coeff > 0, its share of the
  // load-balancing loss ("moe.layers.<layer>.aux_loss": the loss is their sum), whose gradient (times the coefficient and
  // batch.loss_scale) joins the backward through the returned tensor.
  at::Tensor forward(const at::Tensor& x, const UnitBatch& batch, int64_t layer,
                     const kernels::InputRecipe& recipe = {}) const;

  std::shared_ptr<Router> router;
  std::shared_ptr<GroupedExperts> experts;
  std::shared_ptr<FeedForward> shared_experts;  // null without shared experts
  at::Tensor expert_bias;                       // [experts] fp32, zeros until balancing moves it
  // Expert parallelism: `experts` holds rank r's share of the routed experts (the r-th
  // num_experts / size of them) and every token copy travels to its expert's rank and back.
  RankGroup* ep = nullptr;
  // Tensor parallelism: the routed and shared experts hold this rank's part of their hidden
  // width; the block gathers the sequence, routes all of it (alike on every tp rank) and adds
  // its partial sums up as each rank takes its part of the sequence back. With expert
  // parallelism as well (torchtitan's etp 1: ep ranks taken from the tp ranks), the routed
  // experts are whole and each tp rank routes its own part of the sequence; the shared experts
  // stay split by width.
  RankGroup* tp = nullptr;

 private:
  DecoderArgs args_;
};

}  // namespace troupe::models
