#include "kernels/attention.h"

#include <torch/torch.h>

#include <algorithm>
#include <limits>
#include <map>
#include <stdexcept>
#include <vector>

namespace troupe::kernels {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::ScalarType accumulation(const at::Tensor& q) { return q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

// The operands in the accumulation dtype, heads grouped by kv head:
// q [B, Hkv, G, Sq, D], k and v [B, Hkv, 1, Sk, D].
struct Grouped {
  at::Tensor q, k, v;
  int64_t B, Sq, Sk, H, Hkv, G;
};

Grouped grouped(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "attention: q, k, v must be [B, S, heads, dim]");
  Grouped g;
  g.B = q.size(0), g.Sq = q.size(1), g.H = q.size(2), g.Sk = k.size(1), g.Hkv = k.size(2);
  TORCH_CHECK(g.Hkv > 0 && g.H % g.Hkv == 0, "attention: ", g.H, " q heads do not group over ", g.Hkv, " kv heads");
  TORCH_CHECK(v.size(1) == g.Sk && v.size(2) == g.Hkv && k.size(0) == g.B && v.size(0) == g.B &&
                  k.size(3) == q.size(3),
              "attention: k and v do not match q");
  g.G = g.H / g.Hkv;
  const auto t = accumulation(q);
  g.q = q.to(t).reshape({g.B, g.Sq, g.Hkv, g.G, q.size(3)}).permute({0, 2, 3, 1, 4});
  g.k = k.to(t).permute({0, 2, 1, 3}).unsqueeze(2);
  g.v = v.to(t).permute({0, 2, 1, 3}).unsqueeze(2);
  return g;
}

// Query rows per chunk, so that long sequences do not materialise [Sq, Sk] scores at once.
int64_t chunk_rows(const Grouped& g, int64_t chunk_scores) {
  return std::max<int64_t>(1, chunk_scores / std::max<int64_t>(1, g.B * g.H * g.Sk));
}

// [B or 1, rows, Sk] -> [B or 1, 1, 1, rows, Sk], beside the grouped scores.
at::Tensor visible_grouped(const AttentionMask& mask, int64_t first, int64_t rows) {
  return mask.visible(first, rows).unsqueeze(1).unsqueeze(1);
}

// The chunk's probabilities P = exp(S - lse), zero where masked (and for rows that see nothing).
at::Tensor probabilities(const at::Tensor& scores, const at::Tensor& lse) {
  const auto finite = at::where(at::isinf(lse), at::zeros_like(lse), lse);
  return at::exp(scores - finite.unsqueeze(-1));
}

// [B, Hkv, G, S, X] <-> [B, S, H, X]
at::Tensor ungroup(const at::Tensor& t) {
  return t.permute({0, 3, 1, 2, 4}).reshape({t.size(0), t.size(3), t.size(1) * t.size(2), t.size(4)});
}
at::Tensor regroup(const at::Tensor& t, const Grouped& g) {
  return t.reshape({g.B, t.size(1), g.Hkv, g.G, t.size(3)}).permute({0, 2, 3, 1, 4});
}

// An autograd function's tensor arguments must be defined: absent documents travel as empty.
at::Tensor present(const at::Tensor& t) { return t.defined() ? t : at::empty({0}, at::TensorOptions().dtype(at::kLong)); }
at::Tensor absent_if_empty(const at::Tensor& t) { return t.numel() == 0 ? at::Tensor() : t; }

struct MaskedAttention : torch::autograd::Function<MaskedAttention> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const at::Tensor& q_positions, const at::Tensor& k_positions, const at::Tensor& q_documents,
                            const at::Tensor& k_documents, double scale) {
    const AttentionMask mask{q_positions, k_positions, absent_if_empty(q_documents), absent_if_empty(k_documents)};
    auto part = attention_part(q, k, v, mask, scale);
    auto out = part.out.to(q.scalar_type());
    ctx->save_for_backward({q, k, v, out, part.lse, q_positions, k_positions, q_documents, k_documents});
    ctx->saved_data["scale"] = scale;
    return out;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();
    const AttentionMask mask{s[5], s[6], absent_if_empty(s[7]), absent_if_empty(s[8])};
    auto [dq, dk, dv] =
        attention_part_backward(grads[0], s[0], s[1], s[2], s[3], s[4], mask, ctx->saved_data["scale"].toDouble());
    return {dq.to(s[0].scalar_type()), dk.to(s[1].scalar_type()), dv.to(s[2].scalar_type()), {}, {}, {}, {}, {}};
  }
};

}  // namespace

AttentionMask AttentionMask::of(const at::Tensor& q_positions, const at::Tensor& k_positions,
                                const at::Tensor& documents) {
  if (!documents.defined()) return {q_positions, k_positions};
  return {q_positions, k_positions, documents.index_select(1, q_positions), documents.index_select(1, k_positions)};
}

at::Tensor AttentionMask::visible(int64_t first, int64_t rows) const {
  const auto qp = q_positions.narrow(0, first, rows);
  auto seen = k_positions.unsqueeze(0).le(qp.unsqueeze(1)).unsqueeze(0);  // [1, rows, Sk]
  if (!q_documents.defined()) return seen;
  const auto same = q_documents.narrow(1, first, rows).unsqueeze(2).eq(k_documents.unsqueeze(1));
  return seen.logical_and(same);
}

AttentionPart attention_part(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const AttentionMask& mask,
                             double scale, int64_t chunk_scores) {
  const auto g = grouped(q, k, v);
  TORCH_CHECK(mask.q_positions.numel() == g.Sq && mask.k_positions.numel() == g.Sk,
              "attention: the mask's positions do not match q and k");
  const auto n = chunk_rows(g, chunk_scores);
  std::vector<at::Tensor> outs, lses;
  for (int64_t first = 0; first < g.Sq; first += n) {
    const auto rows = std::min(n, g.Sq - first);
    auto scores = at::matmul(g.q.narrow(3, first, rows), g.k.transpose(-1, -2)).mul_(scale);
    scores.masked_fill_(visible_grouped(mask, first, rows).logical_not(), -std::numeric_limits<double>::infinity());
    auto lse = at::logsumexp(scores, -1);  // [B, Hkv, G, rows]
    outs.push_back(at::matmul(probabilities(scores, lse), g.v));
    lses.push_back(lse);
  }
  auto out = outs.size() == 1 ? outs[0] : at::cat(outs, 3);
  auto lse = lses.size() == 1 ? lses[0] : at::cat(lses, 3);
  return {ungroup(out), lse.reshape({g.B, g.H, g.Sq})};
}

void merge_attention(AttentionPart& acc, const AttentionPart& part) {
  if (!acc.out.defined()) {
    acc = part;
    return;
  }
  const auto lse = at::logaddexp(acc.lse, part.lse);
  // Shares of the merged exponentials; a query that sees nothing in either keeps zero.
  const auto share = [&](const at::Tensor& l) {
    return at::where(at::isinf(lse), at::zeros_like(lse), at::exp(l - lse)).transpose(1, 2).unsqueeze(-1);
  };
  acc.out = acc.out * share(acc.lse) + part.out * share(part.lse);
  acc.lse = lse;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_part_backward(const at::Tensor& dout, const at::Tensor& q,
                                                                       const at::Tensor& k, const at::Tensor& v,
                                                                       const at::Tensor& out, const at::Tensor& lse,
                                                                       const AttentionMask& mask, double scale,
                                                                       int64_t chunk_scores) {
  const auto g = grouped(q, k, v);
  const auto t = accumulation(q);
  const auto dout_g = regroup(dout.to(t), g);                                  // [B, Hkv, G, Sq, Dv]
  const auto delta = regroup((dout.to(t) * out.to(t)).sum(-1, true), g).squeeze(-1);  // [B, Hkv, G, Sq]
  const auto lse_g = lse.view({g.B, g.Hkv, g.G, g.Sq});
  const auto n = chunk_rows(g, chunk_scores);
  std::vector<at::Tensor> dqs;
  auto dk = at::zeros({g.B, g.Hkv, 1, g.Sk, q.size(3)}, g.q.options());
  auto dv = at::zeros({g.B, g.Hkv, 1, g.Sk, v.size(3)}, g.q.options());
  for (int64_t first = 0; first < g.Sq; first += n) {
    const auto rows = std::min(n, g.Sq - first);
    const auto qc = g.q.narrow(3, first, rows);
    auto scores = at::matmul(qc, g.k.transpose(-1, -2)).mul_(scale);
    scores.masked_fill_(visible_grouped(mask, first, rows).logical_not(), -std::numeric_limits<double>::infinity());
    const auto p = probabilities(scores, lse_g.narrow(3, first, rows));
    const auto doc = dout_g.narrow(3, first, rows);
    dv += at::matmul(p.transpose(-1, -2), doc).sum(2, true);
    const auto ds = p * (at::matmul(doc, g.v.transpose(-1, -2)) - delta.narrow(3, first, rows).unsqueeze(-1));
    dqs.push_back(at::matmul(ds, g.k) * scale);
    dk += at::matmul(ds.transpose(-1, -2), qc).sum(2, true) * scale;
  }
  auto dq = dqs.size() == 1 ? dqs[0] : at::cat(dqs, 3);
  return {ungroup(dq), ungroup(dk), ungroup(dv)};
}

at::Tensor masked_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const AttentionMask& mask,
                            double scale) {
  return MaskedAttention::apply(q, k, v, mask.q_positions, mask.k_positions, present(mask.q_documents),
                                present(mask.k_documents), scale);
}

AttentionSegments AttentionSegments::to(const at::Device& device) const {
  auto moved = *this;
  // From pinned memory, so that the copy does not hold the host thread (see train/trainer.cpp).
  for (auto* set : {&moved.causal, &moved.full})
    for (auto* t : {&set->q_index, &set->q_offsets, &set->k_offsets, &set->k_index})
      if (t->defined()) *t = device.is_cuda() ? t->pin_memory().to(device, /*non_blocking=*/true) : t->to(device);
  return moved;
}

namespace {

// A SegmentSet being built on the host.
struct SetBuilder {
  std::vector<int64_t> q_index, k_index;
  std::vector<int32_t> q_offsets{0}, k_offsets{0};
  int64_t longest_q = 0, longest_k = 0;

  void add(int64_t first_row, int64_t rows, const std::vector<int64_t>& keys) {
    for (int64_t i = 0; i < rows; ++i) q_index.push_back(first_row + i);
    k_index.insert(k_index.end(), keys.begin(), keys.end());
    q_offsets.push_back(static_cast<int32_t>(q_index.size()));
    k_offsets.push_back(static_cast<int32_t>(k_index.size()));
    longest_q = std::max(longest_q, rows);
    longest_k = std::max<int64_t>(longest_k, static_cast<int64_t>(keys.size()));
  }

  // Index tensors left out where they are the identity (every row; the keys are the queries).
  SegmentSet done(int64_t all_rows) const {
    SegmentSet s;
    const auto int32 = at::TensorOptions().dtype(at::kInt), int64 = at::TensorOptions().dtype(at::kLong);
    s.q_offsets = at::tensor(q_offsets, int32);
    s.k_offsets = at::tensor(k_offsets, int32);
    s.longest_q = longest_q;
    s.longest_k = longest_k;
    auto identity = [](const std::vector<int64_t>& v) {
      for (size_t j = 0; j < v.size(); ++j)
        if (v[j] != static_cast<int64_t>(j)) return false;
      return true;
    };
    const bool every_row = static_cast<int64_t>(q_index.size()) == all_rows && identity(q_index);
    if (!every_row) s.q_index = at::tensor(q_index, int64);
    if (!(every_row && q_offsets == k_offsets && identity(k_index))) s.k_index = at::tensor(k_index, int64);
    return s;
  }
};

}  // namespace

AttentionSegments attention_segments(const AttentionMask& mask, int64_t batch) {
  const auto host = [](const at::Tensor& t) { return t.to(at::kCPU, at::kLong).contiguous(); };
  const auto qp = host(mask.q_positions), kp = host(mask.k_positions);
  const auto Sq = qp.numel(), Sk = kp.numel();
  const auto* q_pos = qp.data_ptr<int64_t>();
  const auto* k_pos = kp.data_ptr<int64_t>();
  const bool documents = mask.q_documents.defined();
  const auto qd = documents ? host(mask.q_documents) : at::Tensor(), kd = documents ? host(mask.k_documents) : at::Tensor();
  SetBuilder causal, full;
  for (int64_t b = 0; b < batch; ++b) {
    // Each document's keys in position order, as (position, flattened key index).
    std::map<int64_t, std::vector<std::pair<int64_t, int64_t>>> keys_of;
    for (int64_t j = 0; j < Sk; ++j)
      keys_of[documents ? kd.data_ptr<int64_t>()[b * Sk + j] : 0].emplace_back(k_pos[j], b * Sk + j);
    for (auto& [doc, keys] : keys_of) std::sort(keys.begin(), keys.end());
    const auto* q_doc = documents ? qd.data_ptr<int64_t>() + b * Sq : nullptr;
    std::vector<int64_t> seen;
    for (int64_t i = 0; i < Sq;) {
      int64_t e = i + 1;
      while (e < Sq && q_pos[e] == q_pos[e - 1] + 1 && (!q_doc || q_doc[e] == q_doc[e - 1])) ++e;
      const auto first = q_pos[i], last = q_pos[e - 1];
      seen.clear();
      int64_t own = 0;  // keys at the segment's own positions
      if (const auto it = keys_of.find(q_doc ? q_doc[i] : 0); it != keys_of.end())
        for (const auto& [p, slot] : it->second) {
          if (p > last) break;
          seen.push_back(slot);
          if (p >= first) ++own;
        }
      if (own == e - i) {
        causal.add(b * Sq + i, e - i, seen);
      } else if (own == 0 && !seen.empty()) {
        full.add(b * Sq + i, e - i, seen);
      } else if (own != 0) {
        throw std::invalid_argument("attention segments: the keys hold some of positions " + std::to_string(first) +
                                    ".." + std::to_string(last) + " of a segment of queries but not all");
      }
      i = e;
    }
  }
  return {causal.done(batch * Sq), full.done(batch * Sq)};
}

bool fused_attention_fits(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  const auto d = q.size(3);
  return q.is_cuda() && (q.scalar_type() == at::kBFloat16 || q.scalar_type() == at::kHalf) && k.size(3) == d &&
         v.size(3) == d && d % 8 == 0 && d <= 256 && !at::globalContext().deterministicAlgorithms();
}

namespace {

// [B, S, heads, d] -> [B x S, heads, d], the rows of `index` (all when undefined).
at::Tensor rows_of(const at::Tensor& t, const at::Tensor& index) {
  auto flat = t.reshape({t.size(0) * t.size(1), t.size(2), t.size(3)});
  return index.defined() ? flat.index_select(0, index) : flat;
}

// Flash attention over one set: the packed output [rows, H, Dv] and log-sum-exp [H, rows].
std::pair<at::Tensor, at::Tensor> flash_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                const SegmentSet& set, bool causal, double scale) {
  // Grouped-query heads as flash attention takes them: each kv head serves H / Hkv consecutive
  // q heads.
  auto r = at::_flash_attention_forward(rows_of(q, set.q_index), rows_of(k, set.k_index), rows_of(v, set.k_index),
                                        set.q_offsets, set.k_offsets, set.longest_q, set.longest_k, 0.0, causal,
                                        /*return_debug_mask=*/false, scale);
  auto out = std::get<0>(r), lse = std::get<1>(r);
  TORCH_CHECK(lse.dim() == 2 && lse.size(1) == out.size(0), "flash attention's variable-length log-sum-exp is ",
              lse.sizes(), ", not [heads, rows]");
  return {out, lse};
}

// The flattened query rows a set holds, of `all`.
at::Tensor query_rows(const SegmentSet& set, int64_t all) {
  return set.q_index.defined() ? set.q_index : at::arange(all, set.q_offsets.options().dtype(at::kLong));
}

}  // namespace

at::Tensor segment_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             const AttentionSegments& segments, double scale) {
  TORCH_CHECK(segments.full.empty() && !segments.causal.q_index.defined(),
              "segment_attention: every query must be in a causal segment");
  const auto out = flash_forward(q, k, v, segments.causal, /*causal=*/true, scale).first;
  return out.view({q.size(0), q.size(1), q.size(2), v.size(3)});
}

AttentionPart segment_attention_part(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                     const AttentionSegments& segments, double scale) {
  at::NoGradGuard no_grad;
  const auto B = q.size(0), Sq = q.size(1), H = q.size(2);
  auto out = at::zeros({B * Sq, H, v.size(3)}, q.options().dtype(at::kFloat));
  auto lse = at::full({H, B * Sq}, -std::numeric_limits<double>::infinity(), q.options().dtype(at::kFloat));
  for (const auto* set : {&segments.causal, &segments.full}) {
    if (set->empty()) continue;
    auto [o, l] = flash_forward(q, k, v, *set, set == &segments.causal, scale);
    const auto rows = query_rows(*set, B * Sq);
    out.index_copy_(0, rows, o.to(at::kFloat));
    lse.index_copy_(1, rows, l);
  }
  return {out.view({B, Sq, H, v.size(3)}), lse.view({H, B, Sq}).permute({1, 0, 2}).contiguous()};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> segment_attention_part_backward(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& lse, const AttentionSegments& segments, double scale) {
  at::NoGradGuard no_grad;
  const auto B = q.size(0), Sq = q.size(1), H = q.size(2);
  auto dq = at::zeros({B * Sq, H, q.size(3)}, q.options().dtype(at::kFloat));
  auto dk = at::zeros({B * k.size(1), k.size(2), k.size(3)}, q.options().dtype(at::kFloat));
  auto dv = at::zeros({B * v.size(1), v.size(2), v.size(3)}, q.options().dtype(at::kFloat));
  const auto lse_rows = lse.permute({1, 0, 2}).reshape({H, B * Sq});  // flash's layout: [heads, rows]
  const auto out_q = out.to(q.scalar_type()), dout_q = dout.to(q.scalar_type());
  const auto no_rng = at::empty({2}, q.options().dtype(at::kLong));
  for (const auto* set : {&segments.causal, &segments.full}) {
    if (set->empty()) continue;
    const auto pick = [&](const at::Tensor& rows) { return set->q_index.defined() ? rows.index_select(1, set->q_index) : rows; };
    auto r = at::_flash_attention_backward(rows_of(dout_q, set->q_index), rows_of(q, set->q_index),
                                           rows_of(k, set->k_index), rows_of(v, set->k_index), rows_of(out_q, set->q_index),
                                           pick(lse_rows).contiguous(), set->q_offsets, set->k_offsets, set->longest_q,
                                           set->longest_k, 0.0, set == &segments.causal, no_rng, no_rng, scale);
    const auto q_rows = query_rows(*set, B * Sq);
    const auto k_rows = set->k_index.defined() ? set->k_index : q_rows;
    dq.index_add_(0, q_rows, std::get<0>(r).to(at::kFloat));
    dk.index_add_(0, k_rows, std::get<1>(r).to(at::kFloat));
    dv.index_add_(0, k_rows, std::get<2>(r).to(at::kFloat));
  }
  return {dq.view({B, Sq, H, q.size(3)}), dk.view(k.sizes()), dv.view(v.sizes())};
}

}  // namespace troupe::kernels
