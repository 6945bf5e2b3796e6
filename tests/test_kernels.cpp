// Kernels: the CPU references against ATen autograd ([kernels], everywhere), and the CUDA
// kernels against the CPU references on fresh random inputs of several shapes ([gpu]).
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <catch2/catch.hpp>
#include <torch/torch.h>

#include <barrier>
#include <map>
#include <optional>
#include <thread>

#include "kernels/adamw.h"
#include "kernels/attention.h"
#include "kernels/dense_block_attention.h"
#include "kernels/cross_entropy.h"
#include "kernels/gradient_sink.h"
#include "kernels/moe_ops.h"
#include "kernels/moe_routing.h"
#include "kernels/ops.h"
#include "kernels/rmsnorm.h"
#include "kernels/rotary.h"
#include "kernels/swiglu.h"
#include "kernels/vocab_parallel_loss.h"
#include "kernels/weight_copies.h"
#include "kernels/widen_copy.h"
#include "data/batch_source.h"
#include "data/tokenizer.h"
#include "models/context_parallel.h"
#include "models/model.h"
#include "models/unit.h"
#include "parallel/context_parallel.h"
#include "models/registry.h"
#include "models/common/decoder_architecture.h"
#include "train/adamw.h"
#include "train/job_model.h"
#include "train/trainer.h"
#include "test_support.h"

using namespace troupe;

namespace {

float* f32(at::Tensor& t) { return t.data_ptr<float>(); }

// Reference results of each op (fp32 CPU tensors), computed by the *_ref functions.
struct RmsNormRef {
  at::Tensor out, dx, dweight;
};
RmsNormRef rmsnorm_ref(at::Tensor x, at::Tensor w, at::Tensor dout, float eps) {
  x = x.to(torch::kFloat).contiguous(), w = w.to(torch::kFloat).contiguous(), dout = dout.to(torch::kFloat).contiguous();
  const auto dim = x.size(-1), rows = x.numel() / dim;
  RmsNormRef r{torch::empty_like(x), torch::empty_like(x), torch::zeros({dim})};
  auto rstd = torch::empty({rows});
  kernels::rmsnorm_forward_ref(f32(r.out), f32(rstd), f32(x), f32(w), rows, dim, eps);
  kernels::rmsnorm_backward_ref(f32(r.dx), f32(r.dweight), f32(dout), f32(x), f32(w), f32(rstd), rows, dim);
  return r;
}

struct PairRef {
  at::Tensor out, dx;  // rotary: out, dx; swiglu uses SwigluRef
};
PairRef rotary_ref(at::Tensor x, at::Tensor cos, at::Tensor sin, at::Tensor dout) {
  x = x.to(torch::kFloat).contiguous(), dout = dout.to(torch::kFloat).contiguous();
  PairRef r{torch::empty_like(x), torch::empty_like(x)};
  kernels::rotary_ref(f32(r.out), f32(x), f32(cos), f32(sin), x.size(0), x.size(1), x.size(2), x.size(3), false);
  kernels::rotary_ref(f32(r.dx), f32(dout), f32(cos), f32(sin), x.size(0), x.size(1), x.size(2), x.size(3), true);
  return r;
}

struct SwigluRef {
  at::Tensor out, dgate, dup;
};
SwigluRef swiglu_ref(at::Tensor g, at::Tensor u, at::Tensor dout) {
  g = g.to(torch::kFloat).contiguous(), u = u.to(torch::kFloat).contiguous(), dout = dout.to(torch::kFloat).contiguous();
  SwigluRef r{torch::empty_like(g), torch::empty_like(g), torch::empty_like(g)};
  kernels::swiglu_forward_ref(f32(r.out), f32(g), f32(u), g.numel());
  kernels::swiglu_backward_ref(f32(r.dgate), f32(r.dup), f32(dout), f32(g), f32(u), g.numel());
  return r;
}

struct CrossEntropyRef {
  double loss;
  at::Tensor dhidden, dweight;
};
// Mean loss of hidden·weightᵀ, gradients of the mean.
CrossEntropyRef cross_entropy_ref(at::Tensor h, at::Tensor w, at::Tensor targets) {
  h = h.to(torch::kFloat).contiguous(), w = w.to(torch::kFloat).contiguous();
  auto t = targets.contiguous();
  auto logits = torch::mm(h.to(torch::kDouble), w.to(torch::kDouble).t()).to(torch::kFloat).contiguous();
  auto losses = torch::empty({h.size(0)});
  const float scale = 1.f / static_cast<float>(h.size(0));
  kernels::cross_entropy_ref(f32(logits), f32(losses), t.data_ptr<int64_t>(), h.size(0), w.size(0), scale);
  return {losses.to(torch::kDouble).mean().item<double>(), torch::mm(logits, w), torch::mm(logits.t(), h)};
}

// Forward and backward of an op through its autograd binding; returns output and input grads.
template <class Op>
std::vector<at::Tensor> run_op(Op op, std::vector<at::Tensor> inputs, const at::Tensor& dout) {
  for (auto& x : inputs) x = x.detach().requires_grad_(true);
  auto out = op(inputs);
  out.backward(dout.to(out.device()).to(out.scalar_type()));
  std::vector<at::Tensor> result{out.detach()};
  for (auto& x : inputs) result.push_back(x.grad());
  return result;
}

double rel(const at::Tensor& a, const at::Tensor& b) { return testing::relative_error(a.cpu(), b.cpu()); }

// The routing references' results for fp32 CPU logits.
kernels::RouteChoice route_ref(at::Tensor logits, const at::Tensor& bias, kernels::RouteShape shape) {
  logits = logits.to(torch::kFloat).contiguous();
  shape.tokens = logits.size(0);
  kernels::RouteChoice r{torch::empty_like(logits), torch::empty({shape.tokens, shape.top_k}, torch::kLong),
                         torch::zeros({shape.experts}, torch::kLong)};
  auto b = bias.defined() ? bias.contiguous() : at::Tensor();
  kernels::moe_route_ref(f32(logits), b.defined() ? b.data_ptr<float>() : nullptr, f32(r.scores),
                         r.experts.data_ptr<int64_t>(), r.counts.data_ptr<int64_t>(), shape);
  return r;
}

// Permute and unpermute with their backwards through the references: {copies, dx} and
// {out, dy, dweights}.
struct MoveRef {
  at::Tensor copies, dx, out, dy, dweights;
};
MoveRef move_ref(at::Tensor x, at::Tensor y, at::Tensor weights, const at::Tensor& positions, at::Tensor dcopies,
                 at::Tensor dout) {
  x = x.to(torch::kFloat).contiguous(), y = y.to(torch::kFloat).contiguous();
  weights = weights.contiguous(), dcopies = dcopies.to(torch::kFloat).contiguous(), dout = dout.to(torch::kFloat).contiguous();
  const auto tokens = weights.size(0), top_k = weights.size(1), dim = x.size(1);
  const auto* pos = positions.data_ptr<int64_t>();
  MoveRef r{torch::empty({tokens * top_k, dim}), torch::empty_like(x), torch::empty({tokens, dim}), torch::empty_like(y),
            torch::empty_like(weights)};
  kernels::moe_permute_ref(f32(r.copies), f32(x), pos, tokens, top_k, dim);
  kernels::moe_permute_backward_ref(f32(r.dx), f32(dcopies), pos, tokens, top_k, dim);
  kernels::moe_unpermute_ref(f32(r.out), f32(y), f32(weights), pos, tokens, top_k, dim);
  kernels::moe_unpermute_backward_ref(f32(r.dy), f32(r.dweights), f32(dout), f32(y), f32(weights), pos, tokens, top_k, dim);
  return r;
}

// The share of tokens whose chosen experts (as sets) are the same.
double same_choices(const at::Tensor& a, const at::Tensor& b) {
  const auto sa = std::get<0>(a.cpu().sort(-1)), sb = std::get<0>(b.cpu().sort(-1));
  return (sa == sb).all(-1).to(torch::kDouble).mean().item<double>();
}

}  // namespace

namespace {

// Dense fp64 attention under an explicit boolean mask [B, Sq, Sk], kv heads repeated: the output
// and the log-sum-exp of each query's visible scores, differentiable by autograd.
std::pair<at::Tensor, at::Tensor> dense_masked_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                         const at::Tensor& visible, double scale) {
  const auto groups = q.size(2) / k.size(2);
  const auto qh = q.transpose(1, 2), kh = k.repeat_interleave(groups, 2).transpose(1, 2),
             vh = v.repeat_interleave(groups, 2).transpose(1, 2);
  auto scores = at::matmul(qh, kh.transpose(-1, -2)) * scale;
  scores = scores.masked_fill(visible.unsqueeze(1).logical_not(), -std::numeric_limits<double>::infinity());
  return {at::matmul(at::softmax(scores, -1), vh).transpose(1, 2), at::logsumexp(scores, -1)};
}

}  // namespace

TEST_CASE("masked attention: output, log-sum-exp and gradients match a dense fp64 reference; parts merge exactly",
          "[kernels]") {
  torch::manual_seed(7);
  const int64_t B = 2, S = 24, H = 4, Hkv = 2, D = 8, Dv = 6;
  const double scale = 0.3;
  auto opts = torch::TensorOptions().dtype(torch::kDouble);
  auto q = torch::randn({B, S, H, D}, opts).requires_grad_(), k = torch::randn({B, S, Hkv, D}, opts).requires_grad_(),
       v = torch::randn({B, S, Hkv, Dv}, opts).requires_grad_();
  // The queries in a load-balanced order (chunks 0, 3, 1, 2 of 6 tokens), the keys in order;
  // documents of different lengths per row, crossing the chunks.
  const auto q_pos = torch::cat({torch::arange(0, 6), torch::arange(18, 24), torch::arange(6, 18)});
  const auto k_pos = torch::arange(S);
  const auto ends = torch::zeros({B, S}, torch::kLong);
  for (int64_t p : {4, 9, 10, 19}) ends[0][p] = 1;
  for (int64_t p : {13}) ends[1][p] = 1;
  const auto docs = ends.cumsum(1) - ends;  // as data::document_ids
  const auto q_docs = docs.index_select(1, q_pos);
  const auto visible = k_pos.unsqueeze(0).le(q_pos.unsqueeze(1)).unsqueeze(0).logical_and(
      q_docs.unsqueeze(2).eq(docs.unsqueeze(1)));
  const auto [want_out, want_lse] = dense_masked_attention(q, k, v, visible, scale);
  const auto dout = torch::randn({B, S, H, Dv}, opts);
  const auto want = torch::autograd::grad({want_out}, {q, k, v}, {dout});

  const kernels::AttentionMask mask{q_pos, k_pos, q_docs, docs};
  for (int64_t chunk_scores : {int64_t{1} << 26, int64_t{B * H * S * 5}}) {  // one chunk of rows; chunks of 5
    INFO("chunk scores " << chunk_scores);
    const auto part = kernels::attention_part(q.detach(), k.detach(), v.detach(), mask, scale, chunk_scores);
    CHECK(torch::allclose(part.out, want_out, 1e-12, 1e-12));
    CHECK(torch::allclose(part.lse, want_lse, 1e-12, 1e-12));
    auto [dq, dk, dv] = kernels::attention_part_backward(dout, q.detach(), k.detach(), v.detach(), part.out, part.lse,
                                                         mask, scale, chunk_scores);
    CHECK(torch::allclose(dq, want[0], 1e-10, 1e-12));
    CHECK(torch::allclose(dk, want[1], 1e-10, 1e-12));
    CHECK(torch::allclose(dv, want[2], 1e-10, 1e-12));
  }
  SECTION("the differentiable op") {
    const auto out = kernels::masked_attention(q, k, v, mask, scale);
    const auto got = torch::autograd::grad({out}, {q, k, v}, {dout});
    CHECK(torch::allclose(out, want_out, 1e-12, 1e-12));
    for (int i = 0; i < 3; ++i) CHECK(torch::allclose(got[i], want[i], 1e-10, 1e-12));
  }
  SECTION("two blocks of keys, attended apart and merged by log-sum-exp, give the whole; their gradients add up") {
    // Keys 16.. come first, so some queries see nothing in the first block (lse -inf).
    const auto order = torch::cat({torch::arange(16, 24), torch::arange(0, 16)});
    kernels::AttentionPart merged;
    std::vector<std::pair<at::Tensor, kernels::AttentionMask>> blocks;
    for (auto [first, n] : {std::pair<int64_t, int64_t>{0, 8}, {8, 16}}) {
      const auto keys = order.narrow(0, first, n);
      const kernels::AttentionMask m{q_pos, keys, q_docs, docs.index_select(1, keys)};
      const auto part = kernels::attention_part(q.detach(), k.detach().index_select(1, keys),
                                                v.detach().index_select(1, keys), m, scale);
      if (first == 0) CHECK(torch::isinf(part.lse).any().item<bool>());
      kernels::merge_attention(merged, part);
      blocks.emplace_back(keys, m);
    }
    CHECK(torch::allclose(merged.out, want_out, 1e-12, 1e-12));
    CHECK(torch::allclose(merged.lse, want_lse, 1e-12, 1e-12));
    auto dq = torch::zeros_like(q), dk = torch::zeros_like(k), dv = torch::zeros_like(v);
    for (const auto& [keys, m] : blocks) {
      auto [dq_b, dk_b, dv_b] = kernels::attention_part_backward(dout, q.detach(), k.detach().index_select(1, keys),
                                                                 v.detach().index_select(1, keys), merged.out,
                                                                 merged.lse, m, scale);
      dq += dq_b;
      dk.index_add_(1, keys, dk_b);
      dv.index_add_(1, keys, dv_b);
    }
    CHECK(torch::allclose(dq, want[0], 1e-10, 1e-12));
    CHECK(torch::allclose(dk, want[1], 1e-10, 1e-12));
    CHECK(torch::allclose(dv, want[2], 1e-10, 1e-12));
  }
  SECTION("without documents, in order, it is scaled_dot_product_attention's causal attention") {
    const auto q32 = q.detach().to(torch::kFloat), k32 = k.detach().to(torch::kFloat),
               v32 = k.detach().to(torch::kFloat);
    const auto got = kernels::masked_attention(q32, k32, v32, {k_pos, k_pos}, scale);
    const auto sdpa = at::scaled_dot_product_attention(q32.transpose(1, 2), k32.transpose(1, 2), v32.transpose(1, 2),
                                                       std::nullopt, 0.0, true, scale, /*enable_gqa=*/true)
                          .transpose(1, 2);
    CHECK(got.scalar_type() == torch::kFloat);
    CHECK(torch::allclose(got, sdpa, 1e-5, 1e-6));
  }
}

TEST_CASE("attention segments list, for every query, exactly the keys the mask lets it see: all keys gathered, and "
          "each ring block apart",
          "[kernels]") {
  const int64_t B = 2, S = 48, c = 6;  // cp 4: 8 chunks of 6
  auto ends = torch::zeros({B, S}, torch::kLong);
  for (int64_t p : {3, 4, 20, 40}) ends[0][p] = 1;
  const auto docs = ends.cumsum(1) - ends;
  const auto chunk = [&](int64_t i) { return torch::arange(i * c, (i + 1) * c); };
  const auto block = [&](int64_t r) { return torch::cat({chunk(r), chunk(7 - r)}); };
  const auto rank_major = torch::cat({block(0), block(1), block(2), block(3)});
  for (int64_t rank = 0; rank < 4; ++rank) {
    const auto q_pos = block(rank);
    const int64_t Sq = q_pos.numel();
    for (bool documents : {false, true}) {
      for (int64_t owner = -1; owner < 4; ++owner) {  // -1: every rank's keys, gathered
        INFO("rank " << rank << ", keys " << (owner < 0 ? std::string("all") : "of rank " + std::to_string(owner))
                     << (documents ? ", documents" : ""));
        const auto keys = owner < 0 ? rank_major : block(owner);
        const int64_t Sk = keys.numel();
        const auto mask = kernels::AttentionMask::of(q_pos, keys, documents ? docs : at::Tensor());
        const auto seg = kernels::attention_segments(mask, B);
        if (owner < 0) CHECK(seg.full.empty());  // the whole sequence: every query's own keys are there
        const auto visible = mask.visible(0, Sq).expand({B, -1, -1});
        auto listed = torch::zeros({B * Sq}, torch::kLong);
        for (const auto* set : {&seg.causal, &seg.full}) {
          if (set->empty()) continue;
          const auto qo = set->q_offsets.to(torch::kLong), ko = set->k_offsets.to(torch::kLong);
          const auto rows = set->q_index.defined() ? set->q_index : torch::arange(B * Sq);
          const auto k_index = set->k_index.defined() ? set->k_index : torch::arange(B * Sk);
          for (int64_t g = 0; g + 1 < qo.numel(); ++g) {
            const auto q0 = qo[g].item<int64_t>(), q1 = qo[g + 1].item<int64_t>();
            const auto k0 = ko[g].item<int64_t>(), k1 = ko[g + 1].item<int64_t>();
            const auto seg_keys = k_index.narrow(0, k0, k1 - k0);
            const auto Lq = q1 - q0, Lk = k1 - k0;
            if (set == &seg.causal) REQUIRE(Lk >= Lq);
            // Causal: query i sees the first Lk - Lq + i + 1 keys (aligned at the end); full: all.
            for (int64_t i = 0; i < Lq; ++i) {
              const auto flat = rows[q0 + i].item<int64_t>();
              const auto row = flat / Sq, local = flat % Sq;
              listed[flat] += 1;
              const auto seen = set == &seg.causal ? seg_keys.narrow(0, 0, Lk - Lq + i + 1) : seg_keys;
              CHECK((seen.div(Sk, "floor") == row).all().item<bool>());
              auto got = torch::zeros({S}, torch::kBool);
              got.index_fill_(0, keys.index_select(0, seen.remainder(Sk)), true);
              auto want = torch::zeros({S}, torch::kBool);
              want.index_fill_(0, keys.masked_select(visible[row][local]), true);
              REQUIRE(torch::equal(got, want));
            }
          }
        }
        // A query is listed once where it sees some key here, and nowhere where it sees none.
        CHECK(torch::equal(listed, visible.any(-1).reshape({-1}).to(torch::kLong)));
      }
    }
  }
}

TEST_CASE("the routed experts' grouped SwiGLU: fp32 grouped GEMMs and their backward match fp64 expert by expert, "
          "with and without recomputing", "[kernels]") {
  torch::manual_seed(13);
  const int64_t tokens = 40, experts = 6, top_k = 2, dim = 16, inter = 24;
  // Expert 4 gets no token: its weights' gradients are zero.
  auto logits = torch::randn({tokens, experts});
  logits.select(1, 4).fill_(-100);
  const auto choice = kernels::route_choice(logits, {}, {0, experts, top_k, 1, 1, false});
  REQUIRE(choice.counts[4].item<int64_t>() == 0);
  const auto perm = kernels::permutation(choice.experts, choice.counts);
  const auto flat = torch::randn({tokens, dim}), w1 = torch::randn({experts, inter, dim}) / 4,
             w2 = torch::randn({experts, dim, inter}) / 4, w3 = torch::randn({experts, inter, dim}) / 4;
  const auto dy = torch::randn({tokens * top_k, dim});
  auto run = [&](at::ScalarType dtype, bool recompute) {
    return run_op([&](auto& in) { return kernels::grouped_swiglu(in[0], perm, in[1], in[2], in[3], recompute); },
                  {flat.to(dtype), w1.to(dtype), w2.to(dtype), w3.to(dtype)}, dy.to(dtype));
  };
  const auto want = run(at::kDouble, false);
  const auto kept = run(at::kFloat, false), recomputed = run(at::kFloat, true);
  for (size_t i = 0; i < want.size(); ++i) {
    INFO("result " << i << " (out, d flat, d w1, d w2, d w3)");
    CHECK(rel(kept[i], want[i]) < 1e-5);
    CHECK(torch::equal(recomputed[i], kept[i]));
  }
  CHECK(kept[2][4].abs().max().item<float>() == 0);
}

TEST_CASE("MoE routing and token movement: the CPU references agree with the ATen compositions", "[kernels]") {
  torch::manual_seed(11);
  struct Case {
    int64_t experts, top_k, groups, kept;
    bool sigmoid, bias;
  };
  for (const auto& c : std::vector<Case>{{16, 4, 1, 1, false, false}, {16, 3, 4, 2, true, true}, {8, 2, 8, 3, true, true},
                                         {64, 6, 1, 1, false, true}}) {
    INFO("experts " << c.experts << " top " << c.top_k << " groups " << c.groups << " kept " << c.kept);
    kernels::RouteShape shape{0, c.experts, c.top_k, c.groups, c.kept, c.sigmoid};
    const auto logits = torch::randn({50, c.experts});
    const auto bias = c.bias ? 0.1 * torch::randn({c.experts}) : at::Tensor();
    const auto got = kernels::route_choice(logits, bias, shape);  // the CPU composition
    const auto want = route_ref(logits, bias, shape);
    CHECK(rel(got.scores, want.scores) < 1e-6);
    CHECK(torch::equal(got.experts, want.experts));  // both best first
    CHECK(torch::equal(got.counts, want.counts));
    CHECK(want.counts.sum().item<int64_t>() == 50 * c.top_k);

    // The copies in expert order and back, forward and backward.
    const int64_t dim = 24;
    const auto perm = kernels::permutation(got.experts, got.counts);
    const auto x = torch::randn({50, dim}), y = torch::randn({50 * c.top_k, dim});
    const auto weights = torch::rand({50, c.top_k}), dcopies = torch::randn({50 * c.top_k, dim}), dout = torch::randn({50, dim});
    auto copies = run_op([&](auto& in) { return kernels::permute(in[0], perm); }, {x}, dcopies);
    auto out = run_op([&](auto& in) { return kernels::unpermute(in[0], in[1], perm); }, {y, weights}, dout);
    const auto ref = move_ref(x, y, weights, perm.positions, dcopies, dout);
    CHECK(rel(copies[0], ref.copies) < 1e-6);
    CHECK(rel(copies[1], ref.dx) < 1e-6);
    CHECK(rel(out[0], ref.out) < 1e-6);
    CHECK(rel(out[1], ref.dy) < 1e-6);
    CHECK(rel(out[2], ref.dweights) < 1e-6);
    // Grouped by expert: each expert's rows are its tokens, in token order.
    const auto experts_of_rows = got.experts.reshape({-1}).index_select(0, perm.order);
    CHECK(torch::equal(experts_of_rows, std::get<0>(got.experts.reshape({-1}).sort())));
  }
}

TEST_CASE("CPU references agree with ATen autograd in float64", "[kernels]") {
  torch::manual_seed(11);
  SECTION("rmsnorm") {
    auto x = torch::randn({6, 40}, torch::kDouble), w = 1 + 0.1 * torch::randn({40}, torch::kDouble);
    auto dout = torch::randn({6, 40}, torch::kDouble);
    auto got = run_op([](auto& in) { return kernels::rms_norm(in[0], in[1], 1e-5); }, {x, w}, dout);
    auto ref = rmsnorm_ref(x, w, dout, 1e-5f);
    CHECK(rel(ref.out, got[0]) < 1e-6);
    CHECK(rel(ref.dx, got[1]) < 1e-6);
    CHECK(rel(ref.dweight, got[2]) < 1e-6);
  }
  SECTION("rotary") {
    auto x = torch::randn({2, 5, 3, 8}, torch::kDouble), dout = torch::randn({2, 5, 3, 8}, torch::kDouble);
    auto angles = torch::rand({5, 4}) * 6.0;
    auto cos = angles.cos(), sin = angles.sin();
    auto got = run_op([&](auto& in) { return kernels::rotary(in[0], cos.to(torch::kDouble), sin.to(torch::kDouble)); },
                      {x}, dout);
    auto ref = rotary_ref(x, cos, sin, dout);
    CHECK(rel(ref.out, got[0]) < 1e-6);
    CHECK(rel(ref.dx, got[1]) < 1e-6);
  }
  SECTION("swiglu") {
    auto g = 3 * torch::randn({333}, torch::kDouble), u = torch::randn({333}, torch::kDouble);
    auto dout = torch::randn({333}, torch::kDouble);
    auto got = run_op([](auto& in) { return kernels::swiglu(in[0], in[1]); }, {g, u}, dout);
    auto ref = swiglu_ref(g, u, dout);
    CHECK(rel(ref.out, got[0]) < 1e-6);
    CHECK(rel(ref.dgate, got[1]) < 1e-6);
    CHECK(rel(ref.dup, got[2]) < 1e-6);
  }
  SECTION("linear cross-entropy") {
    auto h = torch::randn({37, 16}, torch::kDouble), w = 0.3 * torch::randn({50, 16}, torch::kDouble);
    auto targets = torch::randint(0, 50, {37}, torch::kLong);
    auto got = run_op([&](auto& in) { return kernels::linear_cross_entropy(in[0], in[1], targets); }, {h, w},
                      torch::ones({}, torch::kDouble));
    auto ref = cross_entropy_ref(h, w, targets);
    CHECK(got[0].item<double>() == Approx(ref.loss).epsilon(1e-6));
    CHECK(rel(ref.dhidden, got[1]) < 1e-5);
    CHECK(rel(ref.dweight, got[2]) < 1e-5);
  }
  SECTION("adamw") {
    for (bool decoupled : {true, false}) {
      INFO((decoupled ? "AdamW" : "Adam"));
      const kernels::AdamHyper hyper{3e-3, 0.9, 0.95, 1e-8, 0.1, decoupled};
      auto p = torch::randn({301}), g = torch::randn({301}), m = 0.1 * torch::randn({301}), v = torch::rand({301});
      auto p0 = p.clone(), p_ref = p.clone(), m_ref = m.clone(), v_ref = v.clone(), g_ref = g.clone();
      auto steps = torch::full({}, 6.0);  // ATen's kernel counts from its step tensor: step 7
      std::optional<at::Tensor> divisor = torch::full({}, 1.7f);
      if (decoupled)
        at::_fused_adamw_({p}, {g}, {m}, {v}, {}, {steps + 1}, hyper.lr, hyper.beta1, hyper.beta2,
                          hyper.weight_decay, hyper.eps, false, false, divisor);
      else
        at::_fused_adam_({p}, {g}, {m}, {v}, {}, {steps + 1}, hyper.lr, hyper.beta1, hyper.beta2, hyper.weight_decay,
                         hyper.eps, false, false, divisor);
      kernels::adamw_update_ref({f32(p_ref), f32(g_ref), f32(m_ref), f32(v_ref), 301}, hyper, 7, 1.7f);
      CHECK(rel(p, p_ref) < 1e-6);
      CHECK(rel(m, m_ref) < 1e-6);
      CHECK(rel(v, v_ref) < 1e-6);
      CHECK(rel(p, p0) > 1e-4);
    }
  }
}

TEST_CASE("a projection with an input recipe keeps no reference to its input and recomputes it", "[kernels]") {
  torch::manual_seed(3);
  auto h = torch::randn({2, 5, 16}, torch::kDouble).requires_grad_();
  auto norm_w = (1 + 0.1 * torch::randn({16}, torch::kDouble)).requires_grad_();
  auto w1 = torch::randn({24, 16}, torch::kDouble).requires_grad_(), w3 = torch::randn({24, 16}, torch::kDouble).requires_grad_();
  auto w2 = torch::randn({16, 24}, torch::kDouble).requires_grad_();
  auto dout = torch::randn({2, 5, 16}, torch::kDouble);
  // norm -> gate/up -> SwiGLU -> down, with and without recipes: the same gradients, and with
  // them neither the norm's output nor SwiGLU's is referenced by the graph.
  std::map<std::string, at::Tensor> grads[2];
  for (int with_recipe : {0, 1}) {
    INFO("recipe " << with_recipe);
    for (auto* t : {&h, &norm_w, &w1, &w3, &w2}) t->mutable_grad() = at::Tensor();
    at::Tensor out;
    {
      auto x = kernels::rms_norm(h, norm_w, 1e-5);
      const auto norm_recipe = with_recipe ? kernels::InputRecipe::rms_norm(h, norm_w, 1e-5) : kernels::InputRecipe{};
      auto gate_up = kernels::linear_group(x, {w1, w3}, norm_recipe);
      auto act = kernels::swiglu(gate_up[0], gate_up[1]);
      out = kernels::linear(act, w2, with_recipe ? kernels::InputRecipe::swiglu(gate_up[0], gate_up[1])
                                                 : kernels::InputRecipe{});
      // Holders of x's and act's memory besides the locals: the projections' saved inputs,
      // unless a recipe replaces them (the ops that made x and act keep their own inputs).
      if (with_recipe) {
        CHECK(x.storage().use_count() == 1);
        CHECK(act.storage().use_count() == 1);
      } else {
        CHECK(x.storage().use_count() > 1);
        CHECK(act.storage().use_count() > 1);
      }
    }
    out.backward(dout);
    for (const auto& [name, t] : std::map<std::string, at::Tensor>{
             {"h", h}, {"norm_w", norm_w}, {"w1", w1}, {"w2", w2}, {"w3", w3}})
      grads[with_recipe][name] = t.grad().clone();
  }
  for (const auto& [name, g] : grads[0]) {
    INFO(name);
    CHECK(rel(grads[1].at(name), g) < 1e-12);
  }
}

TEST_CASE("a weight's bf16 copy is kept while the weight's version stands", "[kernels]") {
  kernels::WeightCopies copies;
  auto w = torch::randn({5, 7});
  kernels::compute_weight(w, at::kBFloat16, nullptr);
  const kernels::WeightServices no_copies;
  kernels::compute_weight(w, at::kBFloat16, &no_copies);
  CHECK(copies.size() == 0);  // services without copies: plain casts
  {
    const kernels::WeightServices services{&copies, nullptr};
    auto first = kernels::compute_weight(w, at::kBFloat16, &services);
    CHECK(torch::equal(first, w.to(at::kBFloat16)));
    CHECK(kernels::compute_weight(w, at::kBFloat16, &services).is_same(first));
    CHECK(copies.current(w).is_same(first));
    w.add_(1.0);  // an in-place write moves the version: the copy is stale
    CHECK(!copies.current(w).defined());
    auto second = kernels::compute_weight(w, at::kBFloat16, &services);
    CHECK(!second.is_same(first));
    CHECK(torch::equal(second, w.to(at::kBFloat16)));
    // What the optimizer's kernel does: it rewrites the weight (moving its version) and the copy.
    w.unsafeGetTensorImpl()->bump_version();
    CHECK(!copies.current(w).defined());
    CHECK(copies.copy_of(w).is_same(second));  // stale, but where the new copy goes
    copies.mark_current(w);
    CHECK(copies.current(w).is_same(second));
    CHECK(kernels::compute_weight(w, at::kFloat, &services).is_same(w));  // no cast, nothing kept
    CHECK(copies.size() == 1);
  }
  // A placed copy lives in the caller's storage and is stale until marked; views of one base
  // share its version, so a write through one view makes every view's copy stale.
  auto flat = torch::randn({12});
  auto flat_copies = torch::zeros({12}, at::kBFloat16);
  const auto a = flat.narrow(0, 0, 5), b = flat.narrow(0, 5, 7).view({7});
  copies.place(a, flat_copies.narrow(0, 0, 5));
  copies.place(b, flat_copies.narrow(0, 5, 7));
  CHECK(!copies.current(a).defined());
  flat_copies.copy_(flat);
  copies.mark_current(a);
  copies.mark_current(b);
  CHECK(copies.current(a).data_ptr() == flat_copies.data_ptr());
  CHECK(torch::equal(copies.current(b), b.to(at::kBFloat16)));
  b.mul_(2.0);
  CHECK(!copies.current(a).defined());
  CHECK(!copies.current(b).defined());
  CHECK_THROWS_WITH(copies.place(a, flat_copies.narrow(0, 0, 4)),
                    Catch::Contains("a copy must be a contiguous bf16 tensor of the weight's shape"));
}

namespace {

// Projections of weights with gradient sinks (FSDP's) write the weights' gradients into the sinks,
// in the sinks' dtype (fp32), and autograd gives those weights none; a weight used twice gets both
// gradients added; a weight without a sink, or with its sink closed, gets autograd's gradient.
// Against fp64 autograd on the same (rounded) values.
void check_gradient_sinks(at::Device device, at::ScalarType dtype, double sink_tolerance, double tolerance) {
  torch::manual_seed(5);
  const auto opts = at::TensorOptions().dtype(dtype).device(device);
  auto x64 = torch::randn({6, 16}, at::kDouble).to(dtype).to(at::kDouble);
  std::vector<at::Tensor> w64, up64;  // a (sink), b (sink, used twice), c (none); upstream gradients
  for (int64_t rows : {8, 4, 4}) w64.push_back(torch::randn({rows, 16}, at::kDouble).to(dtype).to(at::kDouble));
  for (int64_t rows : {8, 4, 4, 4}) up64.push_back(torch::randn({6, rows}, at::kDouble).to(dtype).to(at::kDouble));
  kernels::GradientSinks sinks;
  const kernels::WeightServices services{nullptr, &sinks};
  auto forward = [&](const at::Tensor& x, const std::vector<at::Tensor>& w, const std::vector<at::Tensor>& up,
                     bool ours) {
    auto ab = ours ? kernels::linear_group(x, {w[0], w[1]}, {}, &services)
                   : std::vector{at::linear(x, w[0]), at::linear(x, w[1])};
    auto b_again = ours ? kernels::linear(x, w[1], {}, &services) : at::linear(x, w[1]);
    auto c = ours ? kernels::linear(x, w[2], {}, &services) : at::linear(x, w[2]);
    return ab[0].mul(up[0]).sum() + ab[1].mul(up[1]).sum() + b_again.mul(up[2]).sum() + c.mul(up[3]).sum();
  };
  std::vector<at::Tensor> leaves64;
  auto x_ref = x64.clone().requires_grad_(true);
  for (const auto& w : w64) leaves64.push_back(w.clone().requires_grad_(true));
  forward(x_ref, leaves64, up64, false).backward();

  auto x = x64.to(opts).requires_grad_(true);
  std::vector<at::Tensor> w, up;
  for (const auto& t : w64) w.push_back(t.to(opts).requires_grad_(true));
  for (const auto& t : up64) up.push_back(t.to(opts));
  const auto f32 = at::TensorOptions().dtype(at::kFloat).device(device);
  auto sink_a = torch::full({8, 16}, NAN, f32), sink_b = torch::full({4, 16}, NAN, f32);
  for (int k : {0, 1}) sinks.add(w[k]);
  CHECK(sinks.has(w[0]));
  CHECK(!sinks.has(w[2]));
  sinks.open(w[0], sink_a);
  sinks.open(w[1], sink_b);
  forward(x, w, up, true).backward();
  CHECK(sinks.close(w[0]));
  CHECK(sinks.close(w[1]));
  CHECK(!w[0].grad().defined());
  CHECK(!w[1].grad().defined());
  CHECK(rel(sink_a, leaves64[0].grad()) < sink_tolerance);
  CHECK(rel(sink_b, leaves64[1].grad()) < sink_tolerance);
  CHECK(rel(w[2].grad(), leaves64[2].grad()) < tolerance);
  CHECK(rel(x.grad(), x_ref.grad()) < tolerance);
  // Closed sinks take nothing: the gradients go to autograd again.
  forward(x, w, up, true).backward();
  CHECK(!sinks.close(w[0]));
  CHECK(rel(w[0].grad(), leaves64[0].grad()) < tolerance);
  CHECK(rel(w[1].grad(), leaves64[1].grad()) < tolerance);
  for (int k : {0, 1}) sinks.remove(w[k]);
  CHECK(!sinks.has(w[0]));
  CHECK_THROWS_WITH(sinks.open(w[0], sink_a), Catch::Contains("not registered"));
  // Another owner's sinks, or ops handed none, never see these weights.
  kernels::GradientSinks other;
  CHECK(!other.has(w[0]));
}

}  // namespace

TEST_CASE("projections write weight gradients into gradient sinks (CPU)", "[kernels]") {
  check_gradient_sinks(at::kCPU, at::kFloat, 1e-6, 1e-6);
}

TEST_CASE("projections write fp32 weight gradients of bf16 weights into gradient sinks (CUDA)", "[gpu]") {
  REQUIRE(torch::cuda::is_available());
  // 1e-5 tells fp32 output from a bf16-rounded gradient (about 2e-3).
  check_gradient_sinks(at::kCUDA, at::kBFloat16, 1e-5, 1e-2);
  // The output projection with the loss hands its fp32 weight gradient to a sink whole.
  torch::manual_seed(6);
  const auto h64 = torch::randn({64, 32}, at::kDouble).to(at::kBFloat16).to(at::kDouble);
  const auto w64 = torch::randn({100, 32}, at::kDouble).to(at::kBFloat16).to(at::kDouble);
  const auto targets = torch::randint(0, 100, {64}, at::kLong);
  auto w_ref = w64.clone().requires_grad_(true);
  (at::cross_entropy_loss(at::linear(h64, w_ref), targets) * 3).backward();
  auto h = h64.to(at::kBFloat16).cuda().requires_grad_(true);
  auto w = w64.to(at::kBFloat16).cuda().requires_grad_(true);
  auto sink = torch::full({100, 32}, NAN, torch::dtype(torch::kFloat).device(torch::kCUDA));
  kernels::GradientSinks sinks;
  const kernels::WeightServices services{nullptr, &sinks};
  sinks.add(w);
  sinks.open(w, sink);
  (kernels::linear_cross_entropy(h, w, targets.cuda(), &services, /*chunk_rows=*/16) * 3).backward();
  CHECK(sinks.close(w));
  CHECK(!w.grad().defined());
  CHECK(rel(sink, w_ref.grad()) < 2e-2);  // the logits' gradient is bf16
  (kernels::linear_cross_entropy(h, w, targets.cuda(), &services, 16) * 3).backward();  // closed: autograd's
  CHECK(rel(w.grad(), sink) < 5e-3);
  // A split backward (the zero-bubble schedules) runs the loss node twice, for the input and then
  // for the weight: each gradient is scaled (here by 3) once, and the sink is written once.
  auto h_ref = h64.clone().requires_grad_(true);
  (at::cross_entropy_loss(at::linear(h_ref, w64), targets) * 3).backward();
  h.mutable_grad() = at::Tensor();
  sinks.open(w, sink);
  const auto loss = kernels::linear_cross_entropy(h, w, targets.cuda(), &services, 16) * 3;
  torch::autograd::backward({loss}, {}, /*retain_graph=*/true, /*create_graph=*/false, {h});
  CHECK(rel(h.grad(), h_ref.grad()) < 2e-2);
  torch::autograd::backward({loss}, {}, /*retain_graph=*/false, /*create_graph=*/false, {w});
  CHECK(sinks.close(w));
  CHECK(rel(sink, w_ref.grad()) < 2e-2);
  sinks.remove(w);

  // The norms' weights too: the fp32 gradient of the kernel, not rounded to the bf16 weight's dtype.
  const auto x64 = torch::randn({64, 256}, at::kDouble).to(at::kBFloat16).to(at::kDouble);
  const auto n64 = (1 + 0.1 * torch::randn({256}, at::kDouble)).to(at::kBFloat16).to(at::kDouble);
  const auto up64 = torch::randn({64, 256}, at::kDouble).to(at::kBFloat16).to(at::kDouble);
  auto n_ref = n64.clone().requires_grad_(true);
  (x64 * at::rsqrt(x64.pow(2).mean(-1, true) + 1e-5) * n_ref).mul(up64).sum().backward();
  auto nw = n64.to(at::kBFloat16).cuda().requires_grad_(true);
  auto norm_sink = torch::full({256}, NAN, torch::dtype(torch::kFloat).device(torch::kCUDA));
  sinks.add(nw);
  sinks.open(nw, norm_sink);
  kernels::rms_norm(x64.to(at::kBFloat16).cuda().requires_grad_(true), nw, 1e-5, &services)
      .mul(up64.to(at::kBFloat16).cuda())
      .sum()
      .backward();
  CHECK(sinks.close(nw));
  CHECK(!nw.grad().defined());
  CHECK(rel(norm_sink, n_ref.grad()) < 5e-4);  // rounded to bf16 it would be off by about 1e-3
  sinks.remove(nw);
}

namespace {

// bf16 kernels get bf16-rounded inputs, and the reference sees the same rounded values.
at::Tensor on_gpu(const at::Tensor& t, at::ScalarType dtype) { return t.to(dtype).to(torch::kCUDA); }
at::Tensor as_seen(const at::Tensor& t, at::ScalarType dtype) { return t.to(dtype).to(torch::kFloat); }
double bound(at::ScalarType dtype) { return dtype == at::kBFloat16 ? 1e-2 : 1e-5; }

}  // namespace

TEST_CASE("CUDA kernels match their CPU references", "[gpu]") {
  REQUIRE(torch::cuda::is_available());
  torch::manual_seed(5);
  for (auto dtype : {at::kFloat, at::kBFloat16}) {
    INFO("dtype " << c10::toString(dtype));
    // 5000 x 2048 gives each block of the backward's grid several rows; 3 x 6000 a width that
    // neither packs nor a power of two divides.
    for (auto [rows, dim] : std::vector<std::pair<int64_t, int64_t>>{
             {1, 64}, {37, 2048}, {1024, 4096}, {5000, 2048}, {3, 16384}, {3, 6002}}) {
      INFO("rmsnorm rows " << rows << " dim " << dim);
      auto x = torch::randn({rows, dim}), w = 1 + 0.1 * torch::randn({dim}), dout = torch::randn({rows, dim});
      auto norm = [](auto& in) { return kernels::rms_norm(in[0], in[1], 1e-5); };
      auto got = run_op(norm, {on_gpu(x, dtype), on_gpu(w, at::kFloat)}, on_gpu(dout, dtype));
      auto ref = rmsnorm_ref(as_seen(x, dtype), as_seen(w, dtype), as_seen(dout, dtype), 1e-5f);
      CHECK(rel(got[0], ref.out) < bound(dtype));
      CHECK(rel(got[1], ref.dx) < bound(dtype));
      CHECK(rel(got[2], ref.dweight) < bound(dtype));
      // The weight's gradient is summed in a fixed order: a second run gives the same bits.
      auto again = run_op(norm, {on_gpu(x, dtype), on_gpu(w, at::kFloat)}, on_gpu(dout, dtype));
      CHECK(torch::equal(again[2], got[2]));
    }
    for (auto [rows, dim] : std::vector<std::pair<int64_t, int64_t>>{{37, 2048}, {5, 100}}) {
      INFO("rmsnorm with the residual stream threaded through, rows " << rows << " dim " << dim);
      auto x = torch::randn({rows, dim}), a = torch::randn({rows, dim}), w = 1 + 0.1 * torch::randn({dim});
      auto dn = torch::randn({rows, dim}), dh = torch::randn({rows, dim});
      auto xg = on_gpu(x, dtype).requires_grad_(), ag = on_gpu(a, dtype).requires_grad_();
      auto wg = on_gpu(w, at::kFloat).requires_grad_();
      auto [h, n] = kernels::add_rms_norm(xg, ag, wg, 1e-5);
      torch::autograd::backward({h, n}, {on_gpu(dh, dtype), on_gpu(dn, dtype)});
      // The kernel rounds h to the storage dtype before normalising it, as a separate add would.
      auto h_seen = as_seen(as_seen(x, dtype) + as_seen(a, dtype), dtype);
      auto ref = rmsnorm_ref(h_seen, as_seen(w, dtype), as_seen(dn, dtype), 1e-5f);
      auto dx_ref = ref.dx + as_seen(dh, dtype);
      CHECK(rel(h, h_seen) < bound(dtype));
      CHECK(rel(n, ref.out) < bound(dtype));
      CHECK(rel(xg.grad(), dx_ref) < bound(dtype));
      CHECK(rel(ag.grad(), dx_ref) < bound(dtype));
      CHECK(rel(wg.grad(), ref.dweight) < bound(dtype));

      auto xr = on_gpu(x, dtype).requires_grad_(), wr = on_gpu(w, at::kFloat).requires_grad_();
      auto [through, n1] = kernels::rms_norm_residual(xr, wr, 1e-5);
      torch::autograd::backward({through, n1}, {on_gpu(dh, dtype), on_gpu(dn, dtype)});
      auto ref1 = rmsnorm_ref(as_seen(x, dtype), as_seen(w, dtype), as_seen(dn, dtype), 1e-5f);
      CHECK(rel(through, as_seen(x, dtype)) == 0);
      CHECK(rel(n1, ref1.out) < bound(dtype));
      CHECK(rel(xr.grad(), ref1.dx + as_seen(dh, dtype)) < bound(dtype));
      CHECK(rel(wr.grad(), ref1.dweight) < bound(dtype));
    }
    for (auto shape : std::vector<std::vector<int64_t>>{{1, 1, 1, 2}, {2, 17, 4, 64}, {4, 512, 32, 64}, {1, 64, 8, 128}}) {
      INFO("rotary " << c10::IntArrayRef(shape));
      auto x = torch::randn(shape), dout = torch::randn(shape);
      auto angles = torch::rand({shape[1], shape[3] / 2}) * 100.0;
      auto cos = angles.cos(), sin = angles.sin();
      auto got = run_op([&](auto& in) { return kernels::rotary(in[0], cos.cuda(), sin.cuda()); }, {on_gpu(x, dtype)},
                        on_gpu(dout, dtype));
      auto ref = rotary_ref(as_seen(x, dtype), cos, sin, as_seen(dout, dtype));
      CHECK(rel(got[0], ref.out) < bound(dtype));
      CHECK(rel(got[1], ref.dx) < bound(dtype));
    }
    for (int64_t n : {1L, 1000L, 3L * 1024 * 1024 + 7}) {
      INFO("swiglu n " << n);
      auto g = 3 * torch::randn({n}), u = torch::randn({n}), dout = torch::randn({n});
      auto got = run_op([](auto& in) { return kernels::swiglu(in[0], in[1]); }, {on_gpu(g, dtype), on_gpu(u, dtype)},
                        on_gpu(dout, dtype));
      auto ref = swiglu_ref(as_seen(g, dtype), as_seen(u, dtype), as_seen(dout, dtype));
      CHECK(rel(got[0], ref.out) < bound(dtype));
      CHECK(rel(got[1], ref.dgate) < bound(dtype));
      CHECK(rel(got[2], ref.dup) < bound(dtype));
    }
    for (auto [rows, vocab, chunk] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{
             {1, 10, 4096}, {200, 1000, 64}, {515, 32000, 256}, {64, 128256, 48}}) {
      INFO("linear cross-entropy rows " << rows << " vocab " << vocab << " chunk " << chunk);
      const int64_t dim = 128;
      auto h = torch::randn({rows, dim}), w = 0.2 * torch::randn({vocab, dim});
      auto targets = torch::randint(0, vocab, {rows}, torch::kLong);
      auto got = run_op([&](auto& in) { return kernels::linear_cross_entropy(in[0], in[1], targets.cuda(), nullptr, chunk); },
                        {on_gpu(h, dtype), on_gpu(w, at::kFloat)}, torch::ones({}).cuda());
      auto ref = cross_entropy_ref(as_seen(h, dtype), as_seen(w, dtype), targets);
      CHECK(std::abs(got[0].item<double>() - ref.loss) / ref.loss < bound(dtype));
      CHECK(rel(got[1], ref.dhidden) < bound(dtype));
      CHECK(rel(got[2], ref.dweight) < bound(dtype));
    }
    {
      INFO("swiglu on views 2 bytes past a 16-byte boundary (element-wise path)");
      const int64_t n = 4099;
      auto g = 3 * torch::randn({n + 1}), u = torch::randn({n + 1}), dout = torch::randn({n});
      auto got = run_op([](auto& in) { return kernels::swiglu(in[0], in[1]); },
                        {on_gpu(g, dtype).narrow(0, 1, n), on_gpu(u, dtype).narrow(0, 1, n)}, on_gpu(dout, dtype));
      auto ref = swiglu_ref(as_seen(g.narrow(0, 1, n), dtype), as_seen(u.narrow(0, 1, n), dtype), as_seen(dout, dtype));
      CHECK(rel(got[0], ref.out) < bound(dtype));
      CHECK(rel(got[1], ref.dgate) < bound(dtype));
      CHECK(rel(got[2], ref.dup) < bound(dtype));
    }
    {
      INFO("linear cross-entropy with ignored targets (the mean's divisor counted on the device), its loss's "
           "incoming gradient 0.37 instead of 1");
      const int64_t rows = 300, vocab = 5000, dim = 64;
      auto h = torch::randn({rows, dim}), w = 0.2 * torch::randn({vocab, dim});
      auto targets = torch::randint(0, vocab, {rows}, torch::kLong);
      targets.narrow(0, 0, 77).fill_(-100);
      auto got = run_op([&](auto& in) { return kernels::linear_cross_entropy(in[0], in[1], targets.cuda(), nullptr, 128); },
                        {on_gpu(h, dtype), on_gpu(w, at::kFloat)}, torch::full({}, 0.37).cuda());
      // The ATen composition on the CPU in fp64 (mean over the counted rows).
      auto want = run_op([&](auto& in) { return kernels::linear_cross_entropy(in[0], in[1], targets); },
                         {as_seen(h, dtype).to(torch::kDouble), as_seen(w, dtype).to(torch::kDouble)},
                         torch::full({}, 0.37, torch::kDouble));
      CHECK(std::abs(got[0].item<double>() - want[0].item<double>()) / want[0].item<double>() < bound(dtype));
      CHECK(rel(got[1], want[1]) < bound(dtype));
      CHECK(rel(got[2], want[2]) < bound(dtype));
    }
  }
  {
    INFO("mixed-precision linear: bf16 activations, fp32 master weight, fp32 weight gradient");
    auto x = torch::randn({3, 50, 96}), w = 0.1 * torch::randn({80, 96}), dout = torch::randn({3, 50, 80});
    auto got = run_op([](auto& in) { return kernels::linear(in[0], in[1]); },
                      {on_gpu(x, at::kBFloat16), w.cuda()}, on_gpu(dout, at::kBFloat16));
    CHECK(got[2].scalar_type() == at::kFloat);
    auto want = run_op([](auto& in) { return at::linear(in[0], in[1]); },
                       {as_seen(x, at::kBFloat16).to(torch::kDouble), as_seen(w, at::kBFloat16).to(torch::kDouble)},
                       as_seen(dout, at::kBFloat16).to(torch::kDouble));
    CHECK(rel(got[0], want[0]) < 1e-2);
    CHECK(rel(got[1], want[1]) < 1e-2);
    CHECK(rel(got[2], want[2]) < 1e-2);
  }
  {
    INFO("linear group: x's gradient accumulated over three projections by the GEMMs");
    auto x = torch::randn({2, 40, 64}), dout = torch::randn({2, 40, 48 + 16 + 16});
    std::vector<at::Tensor> ws{0.1 * torch::randn({48, 64}), 0.1 * torch::randn({16, 64}), 0.1 * torch::randn({16, 64})};
    auto group = [](auto& in) { return at::cat(kernels::linear_group(in[0], {in[1], in[2], in[3]}), -1); };
    auto got = run_op(group, {on_gpu(x, at::kBFloat16), ws[0].cuda(), ws[1].cuda(), ws[2].cuda()},
                      on_gpu(dout, at::kBFloat16));
    auto seen = [](const at::Tensor& t) { return as_seen(t, at::kBFloat16).to(torch::kDouble); };
    auto want = run_op(group, {seen(x), seen(ws[0]), seen(ws[1]), seen(ws[2])}, seen(dout));
    for (size_t i = 0; i < got.size(); ++i) {
      INFO("result " << i);
      CHECK(rel(got[i], want[i]) < 1e-2);
    }
  }
}

TEST_CASE("AdamW on CUDA: Troupe's kernel matches the fp64 reference and ATen's fused AdamW", "[gpu]") {
  REQUIRE(torch::cuda::is_available());
  torch::manual_seed(8);
  // 50 tensors (two launches of the kernel's table): several tiles with a ragged end, single
  // elements, and views one float off 16-byte alignment, which take the element-by-element path.
  auto backing = torch::randn({8 * 20000}).cuda();
  std::vector<at::Tensor> params;
  for (int i = 0; i < 50; ++i) {
    const int64_t n = i % 5 == 0 ? 3 * 4096 + 3 : i % 5 == 1 ? 1 : 1000 + 37 * i;
    params.push_back(i % 7 == 3 ? backing.narrow(0, 1 + 20000 * (i / 7), n) : torch::randn({n}).cuda());
  }
  std::vector<at::Tensor> grads, avgs, avg_sqs;
  for (const auto& p : params) {
    grads.push_back(torch::randn_like(p));
    avgs.push_back(0.1 * torch::randn_like(p));
    avg_sqs.push_back(torch::rand_like(p));
  }
  for (bool decoupled : {true, false}) {
    INFO((decoupled ? "AdamW" : "Adam"));
    const kernels::AdamHyper hyper{2e-3, 0.9, 0.95, 1e-8, 0.1, decoupled};
    std::vector<at::Tensor> p_ref, m_ref, v_ref;
    for (size_t i = 0; i < params.size(); ++i) {
      p_ref.push_back(params[i].cpu()), m_ref.push_back(avgs[i].cpu()), v_ref.push_back(avg_sqs[i].cpu());
    }
    for (int64_t step = 1; step <= 3; ++step) {
      const float divisor = step == 2 ? 1.0f : 1.3f;
      auto divisor_gpu = torch::full({}, divisor, torch::dtype(torch::kFloat).device(torch::kCUDA));
      std::vector<kernels::AdamTensor> tensors;
      for (size_t i = 0; i < params.size(); ++i)
        tensors.push_back({params[i].data_ptr<float>(), grads[i].data_ptr<float>(), avgs[i].data_ptr<float>(),
                           avg_sqs[i].data_ptr<float>(), params[i].numel()});
      kernels::adamw_update(tensors.data(), tensors.size(), hyper, step,
                            step == 2 ? nullptr : divisor_gpu.data_ptr<float>(),
                            at::cuda::getCurrentCUDAStream().stream());
      for (size_t i = 0; i < params.size(); ++i) {
        auto g = grads[i].cpu();
        kernels::adamw_update_ref({f32(p_ref[i]), f32(g), f32(m_ref[i]), f32(v_ref[i]), g.numel()}, hyper, step, divisor);
      }
      for (size_t i = 0; i < params.size(); ++i) {
        INFO("step " << step << " tensor " << i << " of " << params[i].numel());
        CHECK(rel(params[i], p_ref[i]) < 1e-5);
        CHECK(rel(avgs[i], m_ref[i]) < 1e-5);
        CHECK(rel(avg_sqs[i], v_ref[i]) < 1e-5);
      }
    }
  }
  // Through train::AdamW (its kernel on CUDA, with the clipping divisor) against ATen's fused
  // AdamW on the CPU, three steps.
  std::vector<std::pair<std::string, at::Tensor>> on_cuda, on_cpu;
  for (int i = 0; i < 4; ++i) {
    auto p = torch::randn({i == 0 ? 1 : 5000 + 3 * i});
    on_cpu.emplace_back("p" + std::to_string(i), p.clone());
    on_cuda.emplace_back("p" + std::to_string(i), p.cuda());
  }
  train::AdamW gpu_opt(on_cuda, {}), cpu_opt(on_cpu, {});
  for (int step = 0; step < 3; ++step) {
    for (size_t i = 0; i < on_cpu.size(); ++i) {
      auto g = torch::randn_like(on_cpu[i].second);
      on_cpu[i].second.mutable_grad() = g;
      on_cuda[i].second.mutable_grad() = g.cuda();
    }
    gpu_opt.step(1e-3, torch::full({}, 2.5f).cuda());
    cpu_opt.step(1e-3, torch::full({}, 2.5f));
  }
  for (size_t i = 0; i < on_cpu.size(); ++i) {
    INFO(on_cpu[i].first);
    CHECK(rel(on_cuda[i].second, on_cpu[i].second) < 1e-5);
  }
  const auto gpu_state = gpu_opt.state(), cpu_state = cpu_opt.state();
  for (const auto& [name, t] : cpu_state) {
    INFO(name);
    CHECK(rel(gpu_state.at(name).to(t.scalar_type()), t) < 1e-5);
  }
  // With kept bf16 copies the kernel rewrites each copy in the same pass; a parameter without
  // one only has its version moved.
  kernels::WeightCopies copies;
  std::vector<std::pair<std::string, at::Tensor>> kept{{"a", torch::randn({4099}).cuda()},
                                                       {"b", torch::randn({64, 33}).cuda()},
                                                       {"c", torch::randn({300}).cuda()}};
  train::AdamW kept_opt(kept, {});
  kept_opt.keep_copies(&copies);
  std::vector<at::Tensor> before;
  for (size_t i = 0; i < 2; ++i) before.push_back(copies.cast(kept[i].second, at::kBFloat16).clone());
  kept[0].second.mul_(1.0);  // a's copy goes stale: the kernel rewrites it all the same
  REQUIRE(!copies.current(kept[0].second).defined());
  const auto c_version = kept[2].second._version();
  for (auto& [name, p] : kept) p.mutable_grad() = torch::randn_like(p);
  kept_opt.step(1e-2, torch::full({}, 1.5f).cuda());
  for (size_t i = 0; i < 2; ++i) {
    INFO(kept[i].first);
    const auto copy = copies.current(kept[i].second);
    REQUIRE(copy.defined());
    CHECK(torch::equal(copy, kept[i].second.to(at::kBFloat16)));
    CHECK(!torch::equal(copy, before[i]));
  }
  CHECK(kept[2].second._version() > c_version);
  CHECK(!copies.current(kept[2].second).defined());
}

namespace {
// Two threads stand in for a TP group of 2 over the vocabulary: on the CPU fp32 throughout; on
// CUDA bf16 hidden rows and fp32 master weights, the GEMMs writing fp32 logits and weight gradients
// from bf16. Loss parallel over unequal shares, or (disable_loss_parallel) each chunk's logits
// gathered whole over equal ones; some targets ignored.
void check_vocab_shares(bool gpu, bool whole_logits) {
  INFO((gpu ? "CUDA" : "CPU") << ", logits gathered whole: " << whole_logits);
  torch::manual_seed(3);
  const int64_t rows = 515, dim = 128, vocab = 32000, first = whole_logits ? vocab / 2 : 19000;
  const auto dtype = gpu ? at::kBFloat16 : at::kFloat;
  auto on_device = [&](const at::Tensor& t) { return gpu ? t.cuda() : t; };
  auto h = torch::randn({rows, dim}), w = 0.2 * torch::randn({vocab, dim});
  auto targets = torch::randint(0, vocab, {rows}, torch::kLong);
  targets.narrow(0, 7, 40).fill_(-100);
  std::barrier sync(2);
  at::Tensor slots[2];
  std::vector<at::Tensor> got[2];
  auto rank = [&](int r) {
    auto meet = [&](const at::Tensor& t, auto combine) {
      slots[r] = t.clone();
      sync.arrive_and_wait();
      auto result = combine(slots[0], slots[1]);
      sync.arrive_and_wait();
      return result;
    };
    const kernels::GroupAllReduce all_reduce = [&](at::Tensor& t, bool max) {
      t.copy_(meet(t, [&](auto& a, auto& b) { return max ? at::maximum(a, b) : a + b; }));
    };
    kernels::GroupAllGather all_gather;
    if (whole_logits) all_gather = [&](const at::Tensor& t) { return meet(t, [](auto& a, auto& b) { return at::stack({a, b}); }); };
    const auto share = r == 0 ? w.narrow(0, 0, first) : w.narrow(0, first, vocab - first);
    got[r] = run_op([&](auto& in) {
      return kernels::vocab_parallel_cross_entropy(in[0], in[1], on_device(targets), r == 0 ? 0 : first, all_reduce,
                                                   all_gather, nullptr, 128);
    }, {on_device(h.to(dtype)), on_device(share.contiguous())}, on_device(torch::ones({})));
  };
  std::thread other(rank, 1);
  rank(0);
  other.join();
  // The reference over the counted rows, its mean rescaled to theirs.
  const auto counted = at::nonzero(targets >= 0).reshape({-1});
  auto ref = cross_entropy_ref(as_seen(h.index_select(0, counted), dtype), as_seen(w, dtype), targets.index_select(0, counted));
  const auto dhidden = torch::zeros({rows, dim}).index_copy_(0, counted, ref.dhidden);
  const double tolerance = gpu ? 2e-2 : 1e-5;
  for (int r = 0; r < 2; ++r) {
    INFO("rank " << r);
    CHECK(std::abs(got[r][0].item<double>() - ref.loss) / ref.loss < tolerance / 2);
    CHECK(got[r][2].scalar_type() == at::kFloat);
  }
  CHECK(rel(got[0][1].to(at::kFloat) + got[1][1].to(at::kFloat), dhidden) < tolerance);  // the shares add up
  CHECK(rel(at::cat({got[0][2], got[1][2]}), ref.dweight) < tolerance);
}
}  // namespace

TEST_CASE("loss parallel: two ranks' vocabulary shares give the whole loss and gradients, the logits gathered whole "
          "or not", "[kernels]") {
  check_vocab_shares(false, GENERATE(false, true));
}

TEST_CASE("loss parallel on CUDA: two ranks' vocabulary shares give the whole loss and gradients of fp64", "[gpu]") {
  REQUIRE(torch::cuda::is_available());
  check_vocab_shares(true, GENERATE(false, true));
}

namespace {
// n threads of one process as a rank group, each rank's tensors on its own device: each
// collective meets at a barrier and reads the others' tensors from shared slots, moved to the
// reader's device and dtype (a ring shift is complete when it returns). One rank on the GPU and
// the others on the CPU: autograd runs one GPU's backward nodes on one thread, where two ranks
// waiting for each other would deadlock.
class ThreadGroup : public models::RankGroup {
 public:
  struct Shared {
    explicit Shared(int n) : slots(n), sync(n) {}
    std::vector<at::Tensor> slots;
    std::barrier<> sync;
  };
  ThreadGroup(int rank, Shared& shared) : rank_(rank), s_(shared) {}
  int rank() const override { return rank_; }
  int size() const override { return static_cast<int>(s_.slots.size()); }
  at::Tensor all_gather(const at::Tensor& in) override {
    return meet(in, [&](auto slot) {
      std::vector<at::Tensor> all;
      for (int r = 0; r < size(); ++r) all.push_back(slot(r));
      return at::stack(all);
    });
  }
  at::Tensor reduce_scatter(const at::Tensor& in) override {
    return meet(in, [&](auto slot) {
      auto sum = slot(0)[rank_].clone();
      for (int r = 1; r < size(); ++r) sum += slot(r)[rank_];
      return sum;
    });
  }
  void all_reduce(at::Tensor& t, bool max) override {
    t.copy_(meet(t, [&](auto slot) {
      auto out = slot(0);
      for (int r = 1; r < size(); ++r) out = max ? at::maximum(out, slot(r)) : out + slot(r);
      return out;
    }));
  }
  std::unique_ptr<Transfer> ring_shift(const at::Tensor& t) override {
    struct Done : Transfer {
      explicit Done(at::Tensor t) : got(std::move(t)) {}
      at::Tensor wait() override { return got; }
      at::Tensor got;
    };
    return std::make_unique<Done>(meet(t, [&](auto slot) { return slot((rank_ + size() - 1) % size()); }));
  }
  std::unique_ptr<Transfer> start_all_to_all(const at::Tensor&, const std::vector<int64_t>&,
                                             const std::vector<int64_t>&) override {
    throw std::logic_error("not here");
  }

 private:
  template <class Read>
  at::Tensor meet(const at::Tensor& mine, Read&& read) {
    s_.slots[rank_] = mine.detach().clone();
    s_.sync.arrive_and_wait();
    auto out = read([&](int r) { return s_.slots[r].to(mine.options(), /*non_blocking=*/false, /*copy=*/true); });
    s_.sync.arrive_and_wait();
    return out;
  }
  int rank_;
  Shared& s_;
};
}  // namespace

// Tensor parallelism's projections on CUDA (bf16 operands, the weight gradients' GEMMs writing
// fp32) against fp64 of all ranks at once: synchronous TP keeping the rank's part of the input,
// and asynchronous TP's collective matmuls with their one-pass backward. The GPU rank is rank 0,
// then rank 1; its peer computes on the CPU in fp32.
TEST_CASE("TP's gathered and scattered projections on CUDA, at once and around the ring, match fp64 with their "
          "gradients (a tp-2 group of a GPU rank and a CPU rank)",
          "[gpu]") {
  REQUIRE(torch::cuda::is_available());
  constexpr int n = 2;
  torch::manual_seed(8);
  const int64_t B = 2, s = 96, D = 256, out_a = 192, out_b = 64, wide = 320;
  const auto seen = [](const at::Tensor& t) { return t.to(at::kBFloat16).to(at::kDouble); };
  const auto x = at::randn({n, B, s, D}), wa = at::randn({n, out_a, D}) / 16, wb = at::randn({n, out_b, D}) / 16;
  const auto z = at::randn({n, B, n * s, wide}), wz = at::randn({n, D, wide}) / 16;
  const auto up_a = at::randn({n, B, n * s, out_a}), up_b = at::randn({n, B, n * s, out_b}), up_y = at::randn({n, B, s, D});
  // fp64 of the bf16 inputs, all ranks at once.
  std::vector<at::Tensor> xs, as, bs, zs, ws;
  for (int r = 0; r < n; ++r) {
    xs.push_back(seen(x[r]).requires_grad_());
    as.push_back(seen(wa[r]).requires_grad_());
    bs.push_back(seen(wb[r]).requires_grad_());
    zs.push_back(seen(z[r]).requires_grad_());
    ws.push_back(seen(wz[r]).requires_grad_());
  }
  const auto whole = at::cat(xs, 1);
  at::Tensor y_sum, loss = at::zeros({}, at::kDouble);
  std::vector<std::vector<at::Tensor>> want(n);
  for (int r = 0; r < n; ++r) {
    const auto y_r = at::linear(zs[r], ws[r]);
    y_sum = y_sum.defined() ? y_sum + y_r : y_r;
  }
  for (int r = 0; r < n; ++r) {
    const auto a = at::linear(whole, as[r]), b = at::linear(whole, bs[r]), y = y_sum.narrow(1, r * s, s);
    loss = loss + (a * seen(up_a[r])).sum() + (b * seen(up_b[r])).sum() + (y * seen(up_y[r])).sum();
    want[r] = {a.detach(), b.detach(), y.detach()};
  }
  loss.backward();
  for (int r = 0; r < n; ++r)
    for (const auto& t : {xs[r], as[r], bs[r], zs[r], ws[r]}) want[r].push_back(t.grad());
  for (const bool ring : {false, true})
    for (const int on_gpu_rank : {0, 1}) {
      INFO((ring ? "asynchronous (around the ring)" : "at once, keeping the rank's part") << ", rank " << on_gpu_rank
                                                                                          << " on the GPU");
      ThreadGroup::Shared shared(n);
      std::vector<std::vector<at::Tensor>> got(n);
      auto rank = [&](int r) {
        ThreadGroup group(r, shared);
        const auto o = r == on_gpu_rank ? at::TensorOptions(torch::kCUDA).dtype(at::kBFloat16)
                                        : at::TensorOptions().dtype(at::kFloat);
        auto leaf = [&](const at::Tensor& t) { return t.to(at::kBFloat16).to(o).requires_grad_(); };
        auto xr = leaf(x[r]), ar = leaf(wa[r]), br = leaf(wb[r]), zr = leaf(z[r]), wr = leaf(wz[r]);
        const auto ab = models::gathered_linear(xr, {ar, br}, group, nullptr, ring, {});
        const auto y = ring ? models::linear_scattered(zr, wr, group, nullptr, {})
                            : models::scatter_sequence_sum(at::linear(zr, wr), group);
        ((ab[0] * up_a[r].to(o)).sum() + (ab[1] * up_b[r].to(o)).sum() + (y * up_y[r].to(o)).sum()).backward();
        got[r] = {ab[0], ab[1], y, xr.grad(), ar.grad(), br.grad(), zr.grad(), wr.grad()};
      };
      std::thread other(rank, 1);
      rank(0);
      other.join();
      for (int r = 0; r < n; ++r)
        for (size_t i = 0; i < want[r].size(); ++i) {
          INFO("rank " << r << ", result " << i << " (a, b, y, dx, dwa, dwb, dz, dwz)");
          REQUIRE(got[r][i].sizes() == want[r][i].sizes());
          CHECK(got[r][i].is_cuda() == (r == on_gpu_rank));
          CHECK(rel(got[r][i].to(at::kDouble), want[r][i]) < 1e-2);
        }
    }
}

TEST_CASE("FSDP's gradient copy-in kernel writes what ATen's _chunk_cat_out writes", "[gpu]") {
  REQUIRE(torch::cuda::is_available());
  // Whole vector tiles, a ragged tail, rows that do not split evenly, a 1-D weight, and a
  // gradient that starts off the 16-byte grid (element by element).
  const std::vector<std::vector<int64_t>> shapes{{300, 64}, {37, 5}, {2048}, {9, 1000}, {1, 7}};
  for (int64_t S : {1, 2, 3, 4}) {
    INFO("ranks " << S);
    std::vector<at::Tensor> grads;
    for (const auto& shape : shapes) grads.push_back(torch::randn(shape, torch::kCUDA).to(at::kBFloat16));
    auto offset_storage = torch::randn({1 + 9 * 1000}, torch::kCUDA).to(at::kBFloat16);
    grads[3] = offset_storage.narrow(0, 1, 9 * 1000).view({9, 1000});
    int64_t shard_numel = 0;
    std::vector<int64_t> offsets, chunks;
    for (const auto& g : grads) {
      const int64_t rows = g.size(0), row_numel = g.numel() / rows;
      offsets.push_back(shard_numel);
      chunks.push_back((rows + S - 1) / S * row_numel);
      shard_numel += chunks.back();
    }
    auto expected = torch::empty({S, shard_numel}, torch::dtype(torch::kFloat).device(torch::kCUDA));
    std::vector<at::Tensor> rows_of;
    for (const auto& g : grads) rows_of.push_back(g.reshape({g.size(0), -1}));
    at::_chunk_cat_out(expected, rows_of, 0, S);
    auto actual = torch::full({S, shard_numel}, 7.f, torch::dtype(torch::kFloat).device(torch::kCUDA));
    std::vector<kernels::WidenPiece> pieces;
    for (size_t k = 0; k < grads.size(); ++k) {
      const auto* src = static_cast<const at::BFloat16*>(grads[k].const_data_ptr());
      for (int64_t r = 0; r < S; ++r) {
        const int64_t first = std::min(grads[k].numel(), r * chunks[k]);
        pieces.push_back({src + first, actual.data_ptr<float>() + r * shard_numel + offsets[k],
                          std::min(chunks[k], grads[k].numel() - first), chunks[k]});
      }
    }
    kernels::widen_pieces(pieces.data(), pieces.size(), at::cuda::getCurrentCUDAStream().stream());
    CHECK(torch::equal(actual.cpu(), expected.cpu()));
  }
}

TEST_CASE("attention on CUDA runs cuDNN's kernel for grouped-query heads and matches fp64", "[gpu]") {
  REQUIRE(torch::cuda::is_available());
  const auto failure = kernels::prefer_cudnn_attention(torch::kCUDA);
  INFO(failure);
  REQUIRE(failure.empty());
  torch::manual_seed(8);
  // [batch, heads, seq, head_dim]: 8 query heads over 2 kv heads, as the models group them.
  auto q = torch::randn({2, 8, 256, 64}), k = torch::randn({2, 2, 256, 64}), v = torch::randn({2, 2, 256, 64});
  auto dout = torch::randn({2, 8, 256, 64});
  auto attention = [](auto& in) {
    return at::scaled_dot_product_attention(in[0], in[1], in[2], std::nullopt, 0.0, /*is_causal=*/true, std::nullopt,
                                            /*enable_gqa=*/true);
  };
  const auto bf16 = at::kBFloat16;
  const auto chosen = at::_fused_sdp_choice(on_gpu(q, bf16), on_gpu(k, bf16), on_gpu(v, bf16), std::nullopt, 0.0, true,
                                            std::nullopt, true);
  CHECK(chosen == static_cast<int64_t>(at::SDPBackend::cudnn_attention));
  auto got = run_op(attention, {on_gpu(q, bf16), on_gpu(k, bf16), on_gpu(v, bf16)}, on_gpu(dout, bf16));
  auto seen = [&](const at::Tensor& t) { return as_seen(t, bf16).to(torch::kDouble); };
  auto want = run_op(attention, {seen(q), seen(k), seen(v)}, seen(dout));
  for (size_t i = 0; i < got.size(); ++i) {
    INFO("result " << i << " (out, dq, dk, dv)");
    CHECK(rel(got[i], want[i]) < 1e-2);
  }
}

TEST_CASE("flash attention over the mask's segments on CUDA matches the masked attention in fp64: block_causal, a "
          "context-parallel rank's queries over the gathered keys, and over each ring block merged by log-sum-exp",
          "[gpu]") {
  REQUIRE(torch::cuda::is_available());
  torch::manual_seed(9);
  const int64_t B = 2, S = 384, H = 8, Hkv = 2, D = 64;
  auto ends = torch::zeros({B, S}, torch::kLong);
  for (int64_t p : {0, 50, 51, 200, 383}) ends[0][p] = 1;  // one-token documents; an EOS that ends the row
  for (int64_t p : {130}) ends[1][p] = 1;
  const auto docs = ends.cumsum(1) - ends;
  // cp 4: rank r holds chunks r and 7-r of 8; the gathered keys are rank-major.
  const auto chunk = [](int64_t i) { return torch::arange(i * 48, (i + 1) * 48); };
  const auto block = [&](int64_t r) { return torch::cat({chunk(r), chunk(7 - r)}); };
  const auto rank_major = torch::cat({block(0), block(1), block(2), block(3)});
  struct Layout {
    const char* name;
    at::Tensor q_pos, k_pos;
    bool documents;
  };
  const double scale = 0.125;
  const auto bf16 = at::kBFloat16;
  auto seen = [&](const at::Tensor& t) { return as_seen(t, bf16).to(torch::kDouble); };
  for (const auto& l : {Layout{"block_causal", torch::arange(S), torch::arange(S), true},
                        Layout{"cp causal", block(1), rank_major, false},
                        Layout{"cp block_causal", block(1), rank_major, true}}) {
    INFO(l.name);
    const auto Sq = l.q_pos.numel();
    auto q = torch::randn({B, Sq, H, D}), k = torch::randn({B, S, Hkv, D}), v = torch::randn({B, S, Hkv, D});
    auto dout = torch::randn({B, Sq, H, D});
    auto mask_over = [&](const at::Tensor& keys) {
      return kernels::AttentionMask::of(l.q_pos, keys, l.documents ? docs : at::Tensor());
    };
    const auto mask = mask_over(l.k_pos);
    const auto segments = kernels::attention_segments(mask, B);
    CHECK(segments.causal.k_index.defined() == (Sq != S));  // keys gathered, or the queries themselves
    REQUIRE(kernels::fused_attention_fits(on_gpu(q, bf16), on_gpu(k, bf16), on_gpu(v, bf16)));
    const auto on_device = segments.to(torch::kCUDA);
    auto fused = [&](auto& in) { return kernels::segment_attention(in[0], in[1], in[2], on_device, scale); };
    auto masked = [&](auto& in) { return kernels::masked_attention(in[0], in[1], in[2], mask, scale); };
    const auto want = run_op(masked, {seen(q), seen(k), seen(v)}, seen(dout));
    const auto got = run_op(fused, {on_gpu(q, bf16), on_gpu(k, bf16), on_gpu(v, bf16)}, on_gpu(dout, bf16));
    for (size_t i = 0; i < got.size(); ++i) {
      INFO("result " << i << " (out, dq, dk, dv)");
      CHECK(rel(got[i], want[i]) < 1e-2);
    }
    if (Sq == S) continue;
    // The ring: rank 1's queries over each rank's block (k and v rank-major: block r at r x 96).
    const auto qg = on_gpu(q, bf16), kg = on_gpu(k, bf16), vg = on_gpu(v, bf16), dg = on_gpu(dout, bf16);
    kernels::AttentionPart merged;
    std::vector<kernels::AttentionSegments> blocks;
    for (int64_t r = 0; r < 4; ++r) {
      blocks.push_back(kernels::attention_segments(mask_over(block(r)), B).to(torch::kCUDA));
      kernels::merge_attention(merged, kernels::segment_attention_part(qg, kg.narrow(1, r * 96, 96),
                                                                       vg.narrow(1, r * 96, 96), blocks.back(), scale));
    }
    CHECK(rel(merged.out, want[0]) < 1e-2);
    auto dq = torch::zeros_like(want[1]), dk = torch::zeros_like(want[2]), dv = torch::zeros_like(want[3]);
    for (int64_t r = 0; r < 4; ++r) {
      auto [dq_r, dk_r, dv_r] = kernels::segment_attention_part_backward(
          dg, qg, kg.narrow(1, r * 96, 96).contiguous(), vg.narrow(1, r * 96, 96).contiguous(), merged.out, merged.lse,
          blocks[r], scale);
      dq += dq_r.cpu().to(torch::kDouble);
      dk.narrow(1, r * 96, 96) += dk_r.cpu().to(torch::kDouble);
      dv.narrow(1, r * 96, 96) += dv_r.cpu().to(torch::kDouble);
    }
    CHECK(rel(dq, want[1]) < 1e-2);
    CHECK(rel(dk, want[2]) < 1e-2);
    CHECK(rel(dv, want[3]) < 1e-2);
  }
}

TEST_CASE("query runs: a context-parallel rank's chunks are runs of consecutive positions; keys past the end give "
          "none; runs that do not cover the queries are refused",
          "[kernels]") {
  const auto q_pos = torch::cat({torch::arange(8, 16), torch::arange(48, 56)});
  const auto runs = kernels::query_runs(q_pos, 64);
  REQUIRE(runs.size() == 2);
  CHECK((runs[0].first == 0 && runs[0].rows == 8 && runs[0].position == 8));
  CHECK((runs[1].first == 8 && runs[1].rows == 8 && runs[1].position == 48));
  CHECK(kernels::query_runs(torch::arange(56, 72), 64).empty());
  CHECK_THROWS_WITH(kernels::dense_block_attention(torch::zeros({1, 4, 2, 8}), torch::zeros({1, 8, 2, 8}),
                                                   torch::zeros({1, 8, 2, 8}), {{0, 2, 0}}, 1.0),
                    Catch::Contains("do not cover"));
}

TEST_CASE("cuDNN's dense blocks of causal attention match the masked attention in fp64: a context-parallel rank's "
          "two chunks over the keys in position order, and the whole sequence",
          "[gpu]") {
  REQUIRE(torch::cuda::is_available());
  torch::manual_seed(10);
  const int64_t B = 2, S = 512, H = 8, Hkv = 2, D = 64;
  const double scale = 0.125;
  const auto bf16 = at::kBFloat16;
  auto seen = [&](const at::Tensor& t) { return as_seen(t, bf16).to(torch::kDouble); };
  // cp 4: rank r holds chunks r and 7 - r of 8.
  const auto chunk = [](int64_t i) { return torch::arange(i * 64, (i + 1) * 64); };
  for (const auto& q_pos : {torch::cat({chunk(1), chunk(6)}), torch::cat({chunk(0), chunk(7)}), torch::arange(S)}) {
    const auto Sq = q_pos.numel();
    INFO("queries from position " << q_pos[0].item<int64_t>() << ", " << Sq << " of them");
    const auto runs = kernels::query_runs(q_pos, S);
    REQUIRE(runs.size() == (Sq == S ? 1u : 2u));
    auto q = torch::randn({B, Sq, H, D}), k = torch::randn({B, S, Hkv, D}), v = torch::randn({B, S, Hkv, D});
    auto dout = torch::randn({B, Sq, H, D});
    REQUIRE(kernels::dense_block_attention_fits(on_gpu(q, bf16), on_gpu(k, bf16), on_gpu(v, bf16)));
    const auto mask = kernels::AttentionMask::of(q_pos, torch::arange(S), at::Tensor());
    auto dense = [&](auto& in) { return kernels::dense_block_attention(in[0], in[1], in[2], runs, scale); };
    auto masked = [&](auto& in) { return kernels::masked_attention(in[0], in[1], in[2], mask, scale); };
    const auto want = run_op(masked, {seen(q), seen(k), seen(v)}, seen(dout));
    const auto got = run_op(dense, {on_gpu(q, bf16), on_gpu(k, bf16), on_gpu(v, bf16)}, on_gpu(dout, bf16));
    for (size_t i = 0; i < got.size(); ++i) {
      INFO("result " << i << " (out, dq, dk, dv)");
      CHECK(rel(got[i], want[i]) < 1e-2);
    }
  }
}

namespace {
// A cp group seen from one rank: its gathers return the whole sequence's keys and values held
// by the test (rank-major), with this rank's own part where the gather puts it.
class HeldSequence : public models::RankGroup {
 public:
  HeldSequence(int rank, std::vector<at::Tensor> wholes) : rank_(rank), wholes_(std::move(wholes)) {}
  int rank() const override { return rank_; }
  int size() const override { return static_cast<int>(wholes_.front().size(0)); }
  at::Tensor all_gather(const at::Tensor& in) override {
    auto out = wholes_.at(next_++ % wholes_.size()).to(in.scalar_type()).clone();
    out[rank_].copy_(in);
    return out;
  }
  at::Tensor reduce_scatter(const at::Tensor& in) override { return in[rank_]; }
  void all_reduce(at::Tensor&, bool) override {}
  std::unique_ptr<Transfer> ring_shift(const at::Tensor&) override { throw std::logic_error("not here"); }
  std::unique_ptr<Transfer> start_all_to_all(const at::Tensor&, const std::vector<int64_t>&,
                                             const std::vector<int64_t>&) override {
    throw std::logic_error("not here");
  }

 private:
  int rank_;
  std::vector<at::Tensor> wholes_;
  size_t next_ = 0;
};
}  // namespace

TEST_CASE("context parallelism's allgather on CUDA takes cuDNN's dense blocks with the trainer's runs and key "
          "order, and matches fp64 attention over the whole sequence",
          "[gpu]") {
  REQUIRE(torch::cuda::is_available());
  torch::manual_seed(11);
  const int64_t B = 1, S = 1024, H = 4, Hkv = 2, D = 64, cp = 4;
  const double scale = 0.125;
  const auto layout = parallel::context_parallel_layout(S, cp);
  const auto q_all = torch::randn({B, S, H, D}), k_all = torch::randn({B, S, Hkv, D}), v_all = torch::randn({B, S, Hkv, D});
  const auto seen = [](const at::Tensor& t) { return t.to(at::kBFloat16).to(torch::kDouble); };
  // The reference: the whole sequence's causal attention in fp64, the rank's rows taken after.
  const auto whole = kernels::masked_attention(seen(q_all), seen(k_all), seen(v_all),
                                               kernels::AttentionMask::of(torch::arange(S), torch::arange(S), {}), scale);
  for (int rank : {0, 2}) {
    INFO("cp rank " << rank);
    const auto mine = layout.positions[static_cast<size_t>(rank)];
    const auto dev = torch::Device(torch::kCUDA);
    // Every rank's keys and values, rank-major [cp, B, S / cp, Hkv, D], as the gather lays them.
    auto rank_major = [&](const at::Tensor& t) {
      return t.index_select(1, layout.rank_major).view({B, cp, S / cp, Hkv, D}).transpose(0, 1).to(dev);
    };
    auto group = std::make_shared<HeldSequence>(rank, std::vector<at::Tensor>{rank_major(k_all), rank_major(v_all)});
    models::UnitBatch batch;
    batch.positions = mine.to(dev);
    batch.all_positions = layout.rank_major.to(dev);
    batch.query_runs = kernels::query_runs(mine, S);
    batch.key_order = at::argsort(layout.rank_major).to(dev);
    REQUIRE(batch.query_runs.size() == 2);
    auto on_dev = [&](const at::Tensor& t) { return t.index_select(1, mine).to(dev, at::kBFloat16); };
    const auto got = models::context_parallel_attention(on_dev(q_all), on_dev(k_all), on_dev(v_all), batch, scale,
                                                        {group, models::RotateMethod::allgather});
    CHECK(rel(got.to(torch::kCPU, torch::kDouble), whole.index_select(1, mine)) < 1e-2);
  }
}

TEST_CASE("the debug model on CUDA in fp32 computes the CPU model's loss and gradients", "[gpu]") {
  REQUIRE(torch::cuda::is_available());
  // The families: Qwen3 adds the norms on each head's q and k (head_dim 32 there), Qwen3 MoE the
  // router and the grouped expert GEMMs.
  const std::string family = GENERATE(as<std::string>{}, "llama3", "qwen3", "qwen3_moe", "deepseek_v3");
  INFO(family);
  const auto args = models::model_spec(family).configure("debugmodel", {});
  auto cpu = args->build(at::TensorOptions().dtype(at::kFloat), 128);
  auto gpu = args->build(at::TensorOptions().dtype(at::kFloat).device(torch::kCUDA), 128);
  cpu->init_weights(3);
  gpu->init_weights(3);
  auto tokens = torch::randint(0, args->vocab_size(), {4, 128}, torch::kLong);
  auto targets = torch::randint(0, args->vocab_size(), {4, 128}, torch::kLong);
  auto lc = cpu->loss({tokens, targets});
  auto lg = gpu->loss({tokens.cuda(), targets.cuda()});
  lc.backward();
  lg.backward();
  CHECK(lg.item<double>() == Approx(lc.item<double>()).epsilon(1e-5));
  auto pc = cpu->named_parameters(), pg = gpu->named_parameters();
  for (const auto& item : pc) {
    INFO(item.key());
    CHECK(rel(pg[item.key()].grad(), item.value().grad()) < 1e-4);
  }
}

TEST_CASE("the op policy on CUDA frees the norms' and SwiGLU's outputs after the forward, gradients unchanged",
          "[gpu]") {
  REQUIRE(torch::cuda::is_available());
  const auto args = models::model_spec("llama3").configure("debugmodel", {});
  const int64_t batch = 4, seq = 256;
  auto tokens = torch::randint(0, args->vocab_size(), {batch, seq}, torch::kLong).cuda();
  auto targets = torch::randint(0, args->vocab_size(), {batch, seq}, torch::kLong).cuda();
  auto allocated = [] {
    c10::cuda::device_synchronize();
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(c10::cuda::current_device());
    // Requested, not allocated: the allocator hands out a large block whole when less than 1 MiB
    // of it would remain, which moved the allocated figure by 2 MiB here.
    return stats.requested_bytes[static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE)].current;
  };
  std::map<std::string, at::Tensor> grads[2];
  int64_t held[2] = {};
  for (int op : {0, 1}) {
    auto model = args->build(at::TensorOptions().dtype(at::kFloat).device(torch::kCUDA), seq);
    model->init_weights(3);
    model->set_compute_dtype(at::kBFloat16);
    model->recompute_elementwise(op == 1);
    const auto before = allocated();
    auto loss = model->loss({tokens, targets});
    held[op] = allocated() - before;  // what the graph keeps for the backward, and the loss
    loss.backward();
    for (const auto& item : model->named_parameters()) grads[op][item.key()] = item.value().grad().clone();
  }
  // Each block stops keeping its two norms' outputs [tokens, dim] and SwiGLU's [tokens, ffn],
  // in bf16.
  const auto& d = dynamic_cast<const models::DecoderArchitecture&>(*args).args();
  const int64_t saved = batch * seq * (2 * d.dim + d.ffn_hidden_dim) * 2 * d.n_layers;
  INFO("held without the policy " << held[0] << ", with it " << held[1] << "; expected difference " << saved);
  CHECK(held[0] - held[1] >= saved * 9 / 10);
  CHECK(held[0] - held[1] <= saved * 11 / 10);
  for (const auto& [name, g] : grads[0]) {
    INFO(name);
    CHECK(rel(grads[1].at(name), g) < 1e-2);
  }
}

TEST_CASE("bf16 training of the debug model on CUDA lowers the loss", "[gpu]") {
  REQUIRE(torch::cuda::is_available());
  config::JobConfig c;
  c.job.device = "cuda";
  c.model.tokenizer_path = testing::source_dir() + "/data/kjv/tokenizer.json";
  c.training.local_batch_size = 8;
  c.training.seq_len = 256;
  c.training.steps = 40;
  c.lr_scheduler.warmup_steps = 4;
  REQUIRE(c.training.mixed_precision_param == "bfloat16");
  data::BatchSource src(c);
  train::Trainer trainer(c, train::job_model(c));
  std::vector<double> losses;
  for (int64_t s = 1; s <= c.training.steps; ++s)
    losses.push_back(trainer.step(s, {std::make_shared<const data::Batch>(src.next())}).loss);
  INFO("first " << losses.front() << " last " << losses.back());
  CHECK(losses.front() > 7.0);
  CHECK(losses.back() < losses.front() - 1.5);
}

TEST_CASE("the first 20 bf16 losses of the debug model on CUDA track the fp32 CPU run", "[gpu]") {
  REQUIRE(torch::cuda::is_available());
  const std::string family = GENERATE(as<std::string>{}, "llama3", "qwen3_moe", "deepseek_v3");
  INFO(family);
  config::JobConfig c;
  c.model.name = family;
  c.model.tokenizer_path = testing::source_dir() + "/data/kjv/tokenizer.json";
  c.training.local_batch_size = 8;
  c.training.seq_len = 256;
  c.training.steps = 20;
  c.lr_scheduler.warmup_steps = 4;
  const auto vocab = data::Tokenizer::load(c.model.tokenizer_path).vocab_size();
  // Same seed: both build the same initial weights (initialised on the CPU generator) and read
  // the same batches.
  auto run = [&](const std::string& device) {
    auto cfg = c;
    cfg.job.device = device;
    data::BatchSource src(cfg);
    train::Trainer trainer(cfg, train::job_model(cfg, vocab));
    std::vector<double> losses;
    for (int64_t s = 1; s <= cfg.training.steps; ++s)
      losses.push_back(trainer.step(s, {std::make_shared<const data::Batch>(src.next())}).loss);
    return losses;
  };
  const auto cpu = run("cpu");   // fp32
  const auto gpu = run("cuda");  // bf16 compute, fp32 masters
  double worst = 0;
  for (size_t i = 0; i < cpu.size(); ++i) worst = std::max(worst, std::abs(gpu[i] - cpu[i]) / cpu[i]);
  INFO("worst relative difference over 20 steps " << worst << "; step 20: cpu " << cpu.back() << " gpu " << gpu.back());
  CHECK(worst < 3e-2);
  CHECK(cpu.back() < cpu.front() - 1.0);  // the runs moved: agreeing means something
}

TEST_CASE("MoE routing and token-movement kernels on CUDA match their CPU references", "[gpu]") {
  REQUIRE(torch::cuda::is_available());
  torch::manual_seed(12);
  struct Case {
    int64_t tokens, experts, top_k, groups, kept, dim;
    bool sigmoid, bias;
  };
  // Qwen3 30B-A3B's routing (128 of top 8, softmax), DeepSeek V3 16B's (64, top 6) and 671B's
  // (256 in 8 groups keeping 4, top 8, sigmoid with the bias), ragged widths.
  for (const auto& c : std::vector<Case>{{4096, 128, 8, 1, 1, 2048, false, false},
                                         {3000, 64, 6, 1, 1, 2048, false, true},
                                         {2048, 256, 8, 8, 4, 1024, true, true},
                                         {77, 8, 2, 8, 3, 100, true, true},
                                         {5, 1000, 3, 1, 1, 6, false, false}}) {
    for (auto dtype : {at::kFloat, at::kBFloat16}) {
      INFO("tokens " << c.tokens << " experts " << c.experts << " top " << c.top_k << " groups " << c.groups
                     << " dim " << c.dim << " " << c10::toString(dtype));
      kernels::RouteShape shape{0, c.experts, c.top_k, c.groups, c.kept, c.sigmoid};
      const auto logits = torch::randn({c.tokens, c.experts});
      const auto bias = c.bias ? 0.05 * torch::randn({c.experts}) : at::Tensor();
      auto lg = on_gpu(logits, dtype).requires_grad_();
      const auto got = kernels::route_choice(lg, bias.defined() ? bias.cuda() : bias, shape);
      const auto want = route_ref(as_seen(logits, dtype), bias, shape);
      CHECK(rel(got.scores, want.scores) < 1e-5);
      // expf against exp in fp64 may flip a near tie: almost every token chooses the same.
      CHECK(same_choices(got.experts, want.experts) > 0.999);
      CHECK(torch::equal(got.counts.cpu(), at::bincount(got.experts.cpu().reshape({-1}), {}, c.experts)));
      // The scores' gradient is softmax's or sigmoid's backward.
      const auto ds = torch::randn({c.tokens, c.experts});
      got.scores.backward(ds.cuda());
      auto lw = as_seen(logits, dtype).to(torch::kDouble).requires_grad_();
      (c.sigmoid ? torch::sigmoid(lw) : torch::softmax(lw, -1)).backward(ds.to(torch::kDouble));
      CHECK(rel(lg.grad(), lw.grad()) < bound(dtype));

      const auto perm = kernels::permutation(got.experts, got.counts);
      const auto x = torch::randn({c.tokens, c.dim}), y = torch::randn({c.tokens * c.top_k, c.dim});
      const auto weights = torch::rand({c.tokens, c.top_k});
      const auto dcopies = torch::randn({c.tokens * c.top_k, c.dim}), dout = torch::randn({c.tokens, c.dim});
      auto copies = run_op([&](auto& in) { return kernels::permute(in[0], perm); }, {on_gpu(x, dtype)}, on_gpu(dcopies, dtype));
      auto out = run_op([&](auto& in) { return kernels::unpermute(in[0], in[1], perm); },
                        {on_gpu(y, dtype), weights.cuda()}, on_gpu(dout, dtype));
      const auto ref = move_ref(as_seen(x, dtype), as_seen(y, dtype), weights, perm.positions.cpu(),
                                as_seen(dcopies, dtype), as_seen(dout, dtype));
      CHECK(rel(copies[0], ref.copies) == 0);  // a copy
      CHECK(rel(copies[1], ref.dx) < bound(dtype));
      CHECK(rel(out[0], ref.out) < bound(dtype));
      CHECK(rel(out[1], ref.dy) < bound(dtype));
      CHECK(rel(out[2], ref.dweights) < bound(dtype));
      // No atomics in the sums: a second run gives the same bits.
      auto again = run_op([&](auto& in) { return kernels::unpermute(in[0], in[1], perm); },
                          {on_gpu(y, dtype), weights.cuda()}, on_gpu(dout, dtype));
      CHECK(torch::equal(again[0], out[0]));
      CHECK(torch::equal(again[2], out[2]));

      if (c.dim % 8 != 0 || c.experts > 256) continue;  // the grouped GEMMs' row alignment
      INFO("grouped SwiGLU");
      const int64_t inter = 256;
      const auto w1 = torch::randn({c.experts, inter, c.dim}) / 16, w2 = torch::randn({c.experts, c.dim, inter}) / 16,
                 w3 = torch::randn({c.experts, inter, c.dim}) / 16;
      const auto dy = torch::randn({c.tokens * c.top_k, c.dim});
      auto experts = [&](bool recompute) {
        return [&, recompute](auto& in) { return kernels::grouped_swiglu(in[0], perm, in[1], in[2], in[3], recompute); };
      };
      auto gpu = run_op(experts(false), {on_gpu(x, dtype), on_gpu(w1, dtype), on_gpu(w2, dtype), on_gpu(w3, dtype)},
                        on_gpu(dy, dtype));
      auto gpu_recomputed = run_op(experts(true), {on_gpu(x, dtype), on_gpu(w1, dtype), on_gpu(w2, dtype),
                                                   on_gpu(w3, dtype)}, on_gpu(dy, dtype));
      const auto cpu_perm = kernels::permutation(got.experts.cpu(), got.counts.cpu());
      auto fp64 = run_op([&](auto& in) { return kernels::grouped_swiglu(in[0], cpu_perm, in[1], in[2], in[3], false); },
                         {as_seen(x, dtype).to(torch::kDouble), as_seen(w1, dtype).to(torch::kDouble),
                          as_seen(w2, dtype).to(torch::kDouble), as_seen(w3, dtype).to(torch::kDouble)},
                         as_seen(dy, dtype).to(torch::kDouble));
      for (size_t i = 0; i < fp64.size(); ++i) {
        INFO("result " << i << " (out, d x, d w1, d w2, d w3)");
        CHECK(rel(gpu[i], fp64[i]) < (dtype == at::kBFloat16 ? 2e-2 : 1e-4));
        CHECK(torch::equal(gpu_recomputed[i], gpu[i]));
      }
    }
  }
}
