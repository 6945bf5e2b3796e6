// Causal attention (no documents) of queries that are runs of consecutive positions over keys in
// position order, computed as dense blocks on cuDNN's fused attention: a run at positions
// [a, a + n) attends to keys [0, a) without a mask and to keys [a, a + n) with the square causal
// one, and the two blocks are merged by their log-sum-exp. This is a context-parallel rank's share
// (its two chunks of every sequence over the gathered keys), run on the kernel the whole sequence
// runs on. Flash attention's variable-length form (kernels::segment_attention) is about 1.5x
// slower than cuDNN on an H100 at these shapes. Measured by `troupe_bench attention-share`; the
// trainer takes it for context parallelism's allgather under causal masking.
//
// Shapes as kernels/attention.h: q [B, Sq, H, D], k [B, Sk, Hkv, D], v [B, Sk, Hkv, Dv].
#pragma once
#include <ATen/core/Tensor.h>

#include <vector>

namespace troupe::kernels {

// A run of queries: rows [first, first + rows) of q, at positions [position, position + rows).
struct QueryRun {
  int64_t first = 0, rows = 0, position = 0;
};

// The runs of `q_positions` (int64, on the host), in order. Empty where a query's keys would not
// be a prefix of keys [0, k_count): a position at or past k_count.
std::vector<QueryRun> query_runs(const at::Tensor& q_positions, int64_t k_count);

// Whether dense_block_attention runs these operands: CUDA, bf16 or fp16, one head size that
// cuDNN's fused attention takes, and not under deterministic algorithms.
bool dense_block_attention_fits(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v);

// The attention of the runs of q over keys 0 .. Sk-1 (k and v in position order), in q's dtype.
// Differentiable in q, k and v: the backward runs each block's cuDNN backward against the merged
// output and log-sum-exp, which makes the blocks' gradients add up to the whole attention's.
at::Tensor dense_block_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                 const std::vector<QueryRun>& runs, double scale);

}  // namespace troupe::kernels
