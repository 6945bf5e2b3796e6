// Attention under a mask given by positions and documents, returning the log-sum-exp of each
// query's scores beside its output: what context parallelism merges partial results by, and
// what document masking (block_causal) needs where scaled_dot_product_attention's causal flag
// cannot say it. An ATen composition on every device (fp32 or fp64 inside whatever the inputs'
// dtype), the query rows taken in chunks so that the scores of one chunk exist at a time.
//
// Shapes: q [B, Sq, H, D], k [B, Sk, Hkv, D], v [B, Sk, Hkv, Dv], with each kv head serving
// H / Hkv consecutive q heads (grouped-query attention); out [B, Sq, H, Dv]; lse [B, H, Sq].
#pragma once
#include <ATen/core/Tensor.h>

#include <tuple>

namespace troupe::kernels {

// Query i sees key j iff k_positions[j] <= q_positions[i] and, with documents, both are of the
// same document of their row. Positions are int64 [Sq] and [Sk] (the same for every row);
// documents int64 [B, Sq] and [B, Sk], or both undefined (one document per row).
struct AttentionMask {
  at::Tensor q_positions, k_positions;
  at::Tensor q_documents, k_documents;

  // Which keys each of the query rows [first, first + rows) sees: bool [B or 1, rows, Sk].
  at::Tensor visible(int64_t first, int64_t rows) const;

  // The queries at `q_positions` over the keys at `k_positions` of rows whose tokens' documents
  // are `documents` [B, seq] (undefined: one document per row).
  static AttentionMask of(const at::Tensor& q_positions, const at::Tensor& k_positions, const at::Tensor& documents);
};

// One part of an attention (all keys, or one block of them): the output in fp32 (fp64 for fp64
// inputs) and the log-sum-exp, -inf for a query that sees no key here (its output is zero).
struct AttentionPart {
  at::Tensor out;  // [B, Sq, H, Dv]
  at::Tensor lse;  // [B, H, Sq]
};

// `chunk_scores`: about how many scores (over batch, heads and keys) one chunk of query rows
// computes at a time.
AttentionPart attention_part(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const AttentionMask& mask,
                             double scale, int64_t chunk_scores = int64_t{1} << 26);

// `acc` becomes the attention over both parts' keys (exact: each output weighted by its share
// of the exponentials); an undefined `acc` takes `part`.
void merge_attention(AttentionPart& acc, const AttentionPart& part);

// The gradients of one part's q, k and v given the whole attention's output `out` and `lse`
// (the flash-attention backward: P = exp(S - lse) is the part's share of the whole softmax), in
// the accumulation dtype; the parts' gradients add up to the whole attention's.
std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_part_backward(const at::Tensor& dout, const at::Tensor& q,
                                                                       const at::Tensor& k, const at::Tensor& v,
                                                                       const at::Tensor& out, const at::Tensor& lse,
                                                                       const AttentionMask& mask, double scale,
                                                                       int64_t chunk_scores = int64_t{1} << 26);

// The whole masked attention as a differentiable op (one part), in q's dtype.
at::Tensor masked_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const AttentionMask& mask,
                            double scale);

// The mask's attention as variable-length sequences for flash attention. The query rows
// (flattened [B x Sq]) are cut into segments, each a run of consecutive positions of one
// document; a segment's keys are the keys of its document up to its last position, in position
// order (indices into the flattened [B x Sk] keys). Where the keys include the segment's own
// positions they end with them, and causal flash attention, which aligns a segment's queries
// with the end of its keys, computes exactly the mask's attention; where they all precede the
// segment (a ring block of earlier chunks), attention without a causal mask does. Queries that
// see no key here are in no segment.
struct SegmentSet {
  at::Tensor q_index;               // int64: the query rows in segments, in order; undefined: every row
  at::Tensor q_offsets, k_offsets;  // int32 [segments + 1]
  at::Tensor k_index;               // int64 [k_offsets' last]; undefined: the keys are the queries
  int64_t longest_q = 0, longest_k = 0;

  bool empty() const { return longest_q == 0; }
};

struct AttentionSegments {
  SegmentSet causal, full;

  bool defined() const { return causal.q_offsets.defined(); }
  AttentionSegments to(const at::Device& device) const;
};

// From a mask on the host. std::invalid_argument where a segment's keys hold some of its own
// positions but not all of them up to its last (no layout that context parallelism makes).
AttentionSegments attention_segments(const AttentionMask& mask, int64_t batch);

// Whether the segment attentions run these operands: CUDA, bf16 or fp16, one head size for q, k
// and v that flash attention takes, and not under deterministic algorithms (the gather of the
// keys adds its gradient with atomics).
bool fused_attention_fits(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v);

// The mask's attention by flash attention over `segments` (from the same mask, on q's device),
// where every query is in a causal segment (the keys hold the whole sequence). Differentiable.
at::Tensor segment_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             const AttentionSegments& segments, double scale);

// attention_part and attention_part_backward by flash attention over `segments`: any block of
// keys (a ring's), the output zero and the log-sum-exp -inf for queries in no segment. Inputs
// in bf16 or fp16; `out` and `lse` of the backward are the whole attention's.
AttentionPart segment_attention_part(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                     const AttentionSegments& segments, double scale);
std::tuple<at::Tensor, at::Tensor, at::Tensor> segment_attention_part_backward(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& lse, const AttentionSegments& segments, double scale);

}  // namespace troupe::kernels
