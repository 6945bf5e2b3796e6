#include "kernels/attention.h"

#include <torch/torch.h>

#include <algorithm>
#include <limits>
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
  for (auto* t : {&moved.q_offsets, &moved.k_offsets, &moved.k_index})
    if (t->defined()) *t = device.is_cuda() ? t->pin_memory().to(device, /*non_blocking=*/true) : t->to(device);
  return moved;
}

AttentionSegments causal_segments(const AttentionMask& mask, int64_t batch) {
  const auto host = [](const at::Tensor& t) { return t.to(at::kCPU, at::kLong).contiguous(); };
  const auto qp = host(mask.q_positions), kp = host(mask.k_positions);
  const auto Sq = qp.numel(), Sk = kp.numel();
  const auto* q_pos = qp.data_ptr<int64_t>();
  const auto* k_pos = kp.data_ptr<int64_t>();
  const bool documents = mask.q_documents.defined();
  const auto qd = documents ? host(mask.q_documents) : at::Tensor(), kd = documents ? host(mask.k_documents) : at::Tensor();
  const int64_t last = Sq > 0 ? *std::max_element(q_pos, q_pos + Sq) : -1;
  // The key slot of each position up to the queries' last.
  std::vector<int64_t> slot(static_cast<size_t>(last + 1), -1);
  for (int64_t j = 0; j < Sk; ++j)
    if (k_pos[j] >= 0 && k_pos[j] <= last) slot[static_cast<size_t>(k_pos[j])] = j;
  for (int64_t p = 0; p <= last; ++p)
    if (slot[static_cast<size_t>(p)] < 0)
      throw std::invalid_argument("attention segments: the keys lack position " + std::to_string(p));
  std::vector<int32_t> q_offsets{0}, k_offsets{0};
  std::vector<int64_t> k_index;
  std::vector<int64_t> doc_start(static_cast<size_t>(last + 1));
  AttentionSegments out;
  for (int64_t b = 0; b < batch; ++b) {
    auto key_doc = [&](int64_t p) { return documents ? kd.data_ptr<int64_t>()[b * Sk + slot[static_cast<size_t>(p)]] : 0; };
    for (int64_t p = 0; p <= last; ++p)
      doc_start[static_cast<size_t>(p)] = p > 0 && key_doc(p) == key_doc(p - 1) ? doc_start[static_cast<size_t>(p - 1)] : p;
    const auto* q_doc = documents ? qd.data_ptr<int64_t>() + b * Sq : nullptr;
    for (int64_t i = 0; i < Sq;) {
      int64_t e = i + 1;
      while (e < Sq && q_pos[e] == q_pos[e - 1] + 1 && (!q_doc || q_doc[e] == q_doc[e - 1])) ++e;
      for (int64_t p = doc_start[static_cast<size_t>(q_pos[i])]; p <= q_pos[e - 1]; ++p)
        k_index.push_back(b * Sk + slot[static_cast<size_t>(p)]);
      q_offsets.push_back(static_cast<int32_t>(b * Sq + e));
      k_offsets.push_back(static_cast<int32_t>(k_index.size()));
      out.longest_q = std::max(out.longest_q, e - i);
      out.longest_k = std::max<int64_t>(out.longest_k, k_offsets.back() - k_offsets[k_offsets.size() - 2]);
      i = e;
    }
  }
  const auto int32 = at::TensorOptions().dtype(at::kInt);
  out.q_offsets = at::tensor(q_offsets, int32);
  out.k_offsets = at::tensor(k_offsets, int32);
  bool identity = q_offsets == k_offsets;
  for (size_t j = 0; identity && j < k_index.size(); ++j) identity = k_index[j] == static_cast<int64_t>(j);
  if (!identity) out.k_index = at::tensor(k_index, at::TensorOptions().dtype(at::kLong));
  return out;
}

bool fused_attention_fits(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  const auto d = q.size(3);
  return q.is_cuda() && (q.scalar_type() == at::kBFloat16 || q.scalar_type() == at::kHalf) && k.size(3) == d &&
         v.size(3) == d && d % 8 == 0 && d <= 256 && !at::globalContext().deterministicAlgorithms();
}

at::Tensor segment_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             const AttentionSegments& segments, double scale) {
  const auto B = q.size(0), Sq = q.size(1), Sk = k.size(1);
  auto keys = [&](const at::Tensor& t) {
    auto flat = t.reshape({B * Sk, t.size(2), t.size(3)});
    return segments.k_index.defined() ? flat.index_select(0, segments.k_index) : flat;
  };
  // Grouped-query heads as flash attention takes them: each kv head serves H / Hkv consecutive
  // q heads.
  auto out = std::get<0>(at::_flash_attention_forward(q.reshape({B * Sq, q.size(2), q.size(3)}), keys(k), keys(v),
                                                      segments.q_offsets, segments.k_offsets, segments.longest_q,
                                                      segments.longest_k, 0.0, /*is_causal=*/true,
                                                      /*return_debug_mask=*/false, scale));
  return out.view({B, Sq, q.size(2), v.size(3)});
}

}  // namespace troupe::kernels
