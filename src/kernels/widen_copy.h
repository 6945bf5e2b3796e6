// FSDP's gradient copy-in on CUDA: the bf16 gradients autograd still gives FSDP's parameters
// (norm weights, a dense embedding table; the projections write theirs in fp32 themselves) cast
// to fp32 into their places in the unit's reduce-scatter buffer, each zero-padded to its length,
// in one launch per 32 pieces. ATen's copies do that at about half the memory bandwidth (1.9 TB/s on an
// H200, stop 18's one-rank FSDP profile).
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/element_types.h"

namespace troupe::kernels {

struct WidenPiece {
  const void* src;  // bf16, `count` values
  float* dst;       // `length` values: the cast of src, then zeros
  int64_t count = 0, length = 0;
};

void widen_pieces(const WidenPiece* pieces, size_t n, cudaStream_t stream);

}  // namespace troupe::kernels
