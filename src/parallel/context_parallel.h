// Context parallelism's side in parallel/: which part of each sequence a cp rank holds, and its
// unit batch. Causal load balancing (torchtitan's): the sequence is cut into 2 x cp equal chunks
// and rank i holds chunks i and 2cp-1-i, so that every rank's queries see as many earlier keys.
#pragma once
#include <ATen/core/Tensor.h>

#include "models/unit.h"

namespace troupe::parallel {

// The positions [0, seq) that rank `rank` of `cp` holds, ascending: int64 [seq / cp].
at::Tensor context_parallel_positions(int64_t seq, int64_t rank, int64_t cp);

// `whole`'s tokens, targets and documents cut to rank `rank`'s positions, with the positions
// and the whole sequence's positions and documents rank-major (UnitBatch::all_positions).
models::UnitBatch context_parallel_part(const models::UnitBatch& whole, int64_t rank, int64_t cp);

}  // namespace troupe::parallel
