// Context parallelism's side in parallel/: which part of each sequence a cp rank holds, and its
// unit batch. Causal load balancing (torchtitan's): the sequence is cut into 2 x cp equal chunks
// and rank i holds chunks i and 2cp-1-i, so that every rank's queries see as many earlier keys.
#pragma once
#include <ATen/core/Tensor.h>

#include <vector>

#include "models/unit.h"

namespace troupe::parallel {

// Which positions of a sequence of `seq` tokens each of `cp` ranks holds (on the host).
struct ContextParallelLayout {
  std::vector<at::Tensor> positions;  // rank r's, ascending: int64 [seq / cp]
  at::Tensor rank_major;              // every rank's in rank order, as a gather lays them: int64 [seq]
};
// One rank: the whole sequence in order. std::invalid_argument if seq does not cut into 2 x cp
// chunks.
ContextParallelLayout context_parallel_layout(int64_t seq, int64_t cp);

// `whole`'s tokens, targets and documents cut to rank `rank`'s positions, with the positions
// and the whole sequence's positions and documents rank-major (UnitBatch::all_positions).
models::UnitBatch context_parallel_part(const models::UnitBatch& whole, const ContextParallelLayout& layout,
                                        int64_t rank);

}  // namespace troupe::parallel
