// Context parallelism inside the units (DESIGN §4): each rank of the cp group holds a part of
// every sequence (parallel/context_parallel.h says which), computes everything but attention on
// it alone, and attends its queries to the whole sequence's keys over the group, either
//  - allgather: the keys and values gathered whole before one attention (torchtitan's), their
//    gradients reduce-scattered back; or
//  - ring: each rank's keys and values passed around the ring, one block attended while the next
//    travels, the partial results merged by their log-sum-exp; the backward passes the blocks
//    around again with their gradients, which arrive home after a full turn.
// The mask comes from positions and documents (kernels::AttentionMask), so a rank's part need not
// be contiguous and documents may cross the parts. On CUDA, allgather runs cuDNN's fused attention
// over dense blocks under plain causal masking (kernels::dense_block_attention: a rank's runs of
// queries over the keys before them and their own square), and flash attention over the mask's
// segments (kernels::segment_attention) with documents; ring's blocks run flash attention over
// each block's segments.
#pragma once
#include <ATen/core/Tensor.h>

#include <string>

#include "models/rank_group.h"

namespace troupe::models {

struct UnitBatch;

enum class RotateMethod { allgather, ring };
// torchtitan's parallelism.context_parallel_rotate_method; std::invalid_argument naming the key.
RotateMethod parse_rotate_method(const std::string& name);

struct ContextParallel {
  RankGroupPtr group;
  RotateMethod method = RotateMethod::allgather;
};

// Attention of this rank's q [B, s, H, D] over k, v [B, s, Hkv, *] of every rank of the group:
// `batch` gives the local tokens' positions and documents and the whole sequence's
// (UnitBatch::all_positions, all_documents). Differentiable in q, k and v.
at::Tensor context_parallel_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                      const UnitBatch& batch, double scale, const ContextParallel& cp);

}  // namespace troupe::models
