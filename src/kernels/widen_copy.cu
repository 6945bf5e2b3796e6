#include <algorithm>
#include <stdexcept>

#include <cuda_bf16.h>

#include "kernels/cuda_check.h"
#include "kernels/device_math.cuh"
#include "kernels/widen_copy.h"

namespace troupe::kernels {

namespace {

constexpr int kThreads = 256;
constexpr int kVector = 8;                       // bf16 values per 16-byte load
constexpr int kUnroll = 2;
constexpr int64_t kTile = kThreads * kVector * kUnroll;
constexpr int kMaxPieces = 32;  // the table is a kernel parameter (at most 4 KiB)

struct PieceTable {
  const __nv_bfloat16* src[kMaxPieces];
  float* dst[kMaxPieces];
  int64_t count[kMaxPieces], length[kMaxPieces];
  int tile_end[kMaxPieces];
  bool aligned[kMaxPieces];  // src and dst 16-byte aligned: whole vector accesses
  int n;
};

__global__ void widen_kernel(PieceTable t) {
  const int tiles = t.tile_end[t.n - 1];
  for (int tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const auto [k, start] = find_tile(t.tile_end, tile, kTile);
    const int64_t end = min(start + kTile, t.length[k]);
    const int64_t count = t.count[k];
    const __nv_bfloat16* S = t.src[k];
    float* D = t.dst[k];
    if (t.aligned[k] && start + kTile <= count) {  // a whole tile of values, none of padding
      uint4 v[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u)
        v[u] = *reinterpret_cast<const uint4*>(S + start + (static_cast<int64_t>(u) * kThreads + threadIdx.x) * kVector);
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t i = start + (static_cast<int64_t>(u) * kThreads + threadIdx.x) * kVector;
        const auto* h = reinterpret_cast<const __nv_bfloat162*>(&v[u]);
        const float2 a = __bfloat1622float2(h[0]), b = __bfloat1622float2(h[1]);
        const float2 c = __bfloat1622float2(h[2]), d = __bfloat1622float2(h[3]);
        *reinterpret_cast<float4*>(D + i) = make_float4(a.x, a.y, b.x, b.y);
        *reinterpret_cast<float4*>(D + i + 4) = make_float4(c.x, c.y, d.x, d.y);
      }
      continue;
    }
    for (int64_t i = start + threadIdx.x; i < end; i += kThreads) D[i] = i < count ? __bfloat162float(S[i]) : 0.f;
  }
}

}  // namespace

void widen_pieces(const WidenPiece* pieces, size_t n, cudaStream_t stream) {
  const int64_t grid_limit = static_cast<int64_t>(device_sm_count()) * 8;
  launch_tables<PieceTable>(
      pieces, n, kMaxPieces, kTile,
      [](const WidenPiece& p) {
        if (p.count < 0 || p.count > p.length)
          throw std::invalid_argument("widen_pieces: a piece's count is negative or exceeds its length");
        return p.length;
      },
      [](PieceTable& t, int k, const WidenPiece& p) {
        t.src[k] = static_cast<const __nv_bfloat16*>(p.src);
        t.dst[k] = p.dst;
        t.count[k] = p.count;
        t.length[k] = p.length;
        t.aligned[k] = pack_aligned({p.src, p.dst});
      },
      [&](PieceTable& t, int entries, int64_t tiles) {
        t.n = entries;
        widen_kernel<<<static_cast<unsigned>(std::min(tiles, grid_limit)), kThreads, 0, stream>>>(t);
        TROUPE_CUDA_CHECK_LAUNCH();
      });
}

}  // namespace troupe::kernels
