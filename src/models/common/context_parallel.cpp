#include "models/context_parallel.h"

#include <torch/torch.h>

#include <stdexcept>

#include "kernels/attention.h"
#include "kernels/dense_block_attention.h"
#include "models/unit.h"

namespace troupe::models {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The mask of this rank's queries against the keys of rank `owner`'s part.
kernels::AttentionMask block_mask(const UnitBatch& batch, int64_t owner, int64_t part) {
  kernels::AttentionMask m{batch.positions, batch.all_positions.narrow(0, owner * part, part)};
  if (batch.documents.defined()) {
    m.q_documents = batch.documents;
    m.k_documents = batch.all_documents.narrow(1, owner * part, part);
  }
  return m;
}

// k and v travel as one flat buffer (one transfer per step).
at::Tensor pack(const at::Tensor& k, const at::Tensor& v) { return at::cat({k.reshape({-1}), v.reshape({-1})}); }
std::pair<at::Tensor, at::Tensor> unpack(const at::Tensor& kv, const at::Tensor& k_like, const at::Tensor& v_like) {
  return {kv.narrow(0, 0, k_like.numel()).view(k_like.sizes()),
          kv.narrow(0, k_like.numel(), v_like.numel()).view(v_like.sizes())};
}

// The blocks' segments kept for the backward (the batch may be gone by then).
void save_segments(AutogradContext* ctx, const std::vector<kernels::AttentionSegments>& all) {
  c10::List<at::Tensor> tensors;
  std::vector<int64_t> longest;
  for (const auto& s : all)
    for (const auto* set : {&s.causal, &s.full}) {
      for (const auto& t : {set->q_index, set->q_offsets, set->k_offsets, set->k_index}) tensors.push_back(t);
      longest.push_back(set->longest_q);
      longest.push_back(set->longest_k);
    }
  ctx->saved_data["segment_tensors"] = tensors;
  ctx->saved_data["segment_longest"] = longest;
}

std::vector<kernels::AttentionSegments> saved_segments(AutogradContext* ctx) {
  std::vector<kernels::AttentionSegments> all;
  if (ctx->saved_data.find("segment_tensors") == ctx->saved_data.end()) return all;
  const auto tensors = ctx->saved_data["segment_tensors"].toTensorList();
  const auto longest = ctx->saved_data["segment_longest"].toIntVector();
  for (size_t i = 0, t = 0, l = 0; i < longest.size() / 4; ++i) {
    kernels::AttentionSegments s;
    for (auto* set : {&s.causal, &s.full}) {
      set->q_index = tensors[t++];
      set->q_offsets = tensors[t++];
      set->k_offsets = tensors[t++];
      set->k_index = tensors[t++];
      set->longest_q = longest[l++];
      set->longest_k = longest[l++];
    }
    all.push_back(std::move(s));
  }
  return all;
}

struct RingAttention : torch::autograd::Function<RingAttention> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            int64_t batch_address, int64_t group_address, double scale) {
    const auto& batch = *reinterpret_cast<const UnitBatch*>(batch_address);
    auto& group = *reinterpret_cast<RankGroup*>(group_address);
    const int n = group.size(), r = group.rank();
    const auto part = k.size(1);
    // Flash attention per block where the batch carries each block's segments (CUDA).
    const bool fused = static_cast<int>(batch.attention_segments.size()) == n && kernels::fused_attention_fits(q, k, v);
    kernels::AttentionPart acc;
    auto block = pack(k, v);
    for (int step = 0; step < n; ++step) {
      const int owner = (r - step + n) % n;
      // The next block travels while this one is attended to.
      auto next = step + 1 < n ? group.ring_shift(block) : nullptr;
      const auto [kb, vb] = unpack(block, k, v);
      kernels::merge_attention(acc, fused ? kernels::segment_attention_part(q, kb, vb, batch.attention_segments[owner], scale)
                                          : kernels::attention_part(q, kb, vb, block_mask(batch, owner, part), scale));
      if (next) block = next->wait();
    }
    auto out = acc.out.to(q.scalar_type());
    ctx->save_for_backward({q, k, v, out, acc.lse, batch.positions, batch.all_positions, batch.documents,
                            batch.all_documents});
    ctx->saved_data["group"] = group_address;
    ctx->saved_data["scale"] = scale;
    if (fused) save_segments(ctx, batch.attention_segments);
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();
    const auto &q = s[0], &k = s[1], &v = s[2], &out = s[3], &lse = s[4];
    UnitBatch batch;
    batch.positions = s[5], batch.all_positions = s[6], batch.documents = s[7], batch.all_documents = s[8];
    auto& group = *reinterpret_cast<RankGroup*>(ctx->saved_data["group"].toInt());
    const double scale = ctx->saved_data["scale"].toDouble();
    const int n = group.size(), r = group.rank();
    const auto part = k.size(1);
    const auto segments = saved_segments(ctx);
    at::Tensor dq;
    auto block = pack(k, v);
    at::Tensor carried;  // the gradient of the block held, travelling with it
    for (int step = 0; step < n; ++step) {
      const int owner = (r - step + n) % n;
      auto next = step + 1 < n ? group.ring_shift(block) : nullptr;
      const auto [kb, vb] = unpack(block, k, v);
      auto [dq_part, dk_part, dv_part] =
          segments.empty()
              ? kernels::attention_part_backward(grads[0], q, kb, vb, out, lse, block_mask(batch, owner, part), scale)
              : kernels::segment_attention_part_backward(grads[0], q, kb, vb, out, lse, segments[owner], scale);
      dq = dq.defined() ? dq + dq_part : dq_part;
      auto mine = pack(dk_part, dv_part);
      carried = carried.defined() ? carried + mine : mine;
      // The next block has had the step's compute to arrive; it is waited for before the
      // gradient leaves, so that one exchange at a time is in flight between two ranks.
      if (next) block = next->wait();
      // After a full turn each block's gradient is back with its owner.
      carried = group.ring_shift(carried)->wait();
    }
    const auto [dk, dv] = unpack(carried, k, v);
    return {dq.to(q.scalar_type()), dk.to(k.scalar_type()), dv.to(v.scalar_type()), {}, {}, {}};
  }
};

}  // namespace

RotateMethod parse_rotate_method(const std::string& name) {
  if (name == "allgather") return RotateMethod::allgather;
  if (name == "ring") return RotateMethod::ring;
  throw std::invalid_argument("parallelism.context_parallel_rotate_method: unknown '" + name + "' (allgather, ring)");
}

at::Tensor context_parallel_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                      const UnitBatch& batch, double scale, const ContextParallel& cp) {
  auto& group = *cp.group;
  if (!batch.all_positions.defined() || batch.all_positions.numel() != k.size(1) * group.size())
    throw std::logic_error("context-parallel attention needs the whole sequence's positions (UnitBatch::all_positions)");
  if (cp.method == RotateMethod::ring)
    return RingAttention::apply(q, k, v, reinterpret_cast<int64_t>(&batch), reinterpret_cast<int64_t>(&group), scale);
  // allgather: the whole sequence's keys and values, rank-major as all_positions.
  const auto k_all = gather_sequence(k, group), v_all = gather_sequence(v, group);
  if (!batch.query_runs.empty() && kernels::dense_block_attention_fits(q, k_all, v_all))
    return kernels::dense_block_attention(q, k_all.index_select(1, batch.key_order),
                                          v_all.index_select(1, batch.key_order), batch.query_runs, scale);
  if (batch.attention_segments.size() == 1 && kernels::fused_attention_fits(q, k, v))
    return kernels::segment_attention(q, k_all, v_all, batch.attention_segments[0], scale);
  kernels::AttentionMask mask{batch.positions, batch.all_positions, batch.documents, batch.all_documents};
  return kernels::masked_attention(q, k_all, v_all, mask, scale);
}

}  // namespace troupe::models
