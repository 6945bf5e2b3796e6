// The quantize kernels of float8.h. One block takes a 128 x 128 tile into shared memory (in the
// input's type), finds the tile's row-run and column-run maxima where the scales come from the
// tile (`tile`, `block`: one pass), and writes the tile quantized both ways: row by row into
// `out`, column by column into `out_t` (a tile transpose in shared memory, so both writes are
// coalesced). `tensor` scales take a plain amax reduction first; `row` scales a first pass of
// the tile kernel that gathers the row and column maxima (atomic max on the float bits, which
// orders like the values for non-negatives).
#include <cuda_fp8.h>

#include <algorithm>
#include <stdexcept>

#include "kernels/cuda_check.h"
#include "kernels/device_math.cuh"
#include "kernels/float8.h"

namespace troupe::kernels {

namespace {

constexpr int kT = 128;
constexpr int kThreads = 256;
constexpr int kPitch = kT + 2;  // shared rows padded: the transposed reads spread over the banks
constexpr int kRunFloats = 4 * kT + 4;  // the run maxima, the multipliers, the block's max (16-byte multiple)
template <class T>
constexpr size_t shared_bytes() { return sizeof(float) * kRunFloats + sizeof(T) * kT * kPitch; }

__device__ __forceinline__ float scale_of(float amax, float fmt_max, bool pow2) {
  float s = __fdiv_rn(fmaxf(amax, kFp8AmaxFloor), fmt_max);
  if (pow2) {
    unsigned b = __float_as_uint(s);
    if (b & 0x7FFFFFu) b = (b & 0xFF800000u) + 0x800000u;  // up to the next power of two
    s = __uint_as_float(b);
  }
  return s;
}

__device__ __forceinline__ uint8_t to_fp8(float v, Fp8Format f) {
  return f == Fp8Format::e4m3 ? __nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E4M3)
                              : __nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E5M2);
}

__device__ __forceinline__ void atomic_max_nonneg(float* p, float v) {
  atomicMax(reinterpret_cast<int*>(p), __float_as_int(v));
}

__device__ __forceinline__ int64_t scale_index(ScaleGranularity g, int64_t rows, int64_t cols, int64_t r, int64_t c) {
  switch (g) {
    case ScaleGranularity::tensor: return 0;
    case ScaleGranularity::row: return r;
    case ScaleGranularity::tile: return (c / kT) * rows + r;
    default: return (r / kT) * (((cols + kT - 1) / kT + 3) / 4 * 4) + c / kT;
  }
}

// The largest magnitude of n elements into *amax (zeroed by the caller): tensor scales need no
// tile, only a reduction at the bandwidth of one read.
template <class T, bool kVec>
__global__ void __launch_bounds__(kThreads) tensor_amax(const T* in, int64_t n, float* amax) {
  constexpr int P = kVec ? Pack<T>::size : 1;
  __shared__ float warp_max[kThreads / 32];
  float m = 0.f;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads * P;
  for (int64_t i = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) * P; i < n; i += stride) {
    if (kVec && i + P <= n) {
      const auto k = load_pack(in + i);
#pragma unroll
      for (int j = 0; j < P; ++j) m = fmaxf(m, fabsf(to_float(k.v[j])));
    } else {
      for (int64_t j = i; j < n && j < i + P; ++j) m = fmaxf(m, fabsf(to_float(in[j])));
    }
  }
  for (int off = 16; off > 0; off >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
  if ((threadIdx.x & 31) == 0) warp_max[threadIdx.x >> 5] = m;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < kThreads / 32; ++w) m = fmaxf(m, warp_max[w]);
    atomic_max_nonneg(amax, m);
  }
}

// kAmax: only gather the maxima into row_amax[rows] / col_amax[cols] (row scales).
template <class T, bool kAmax, bool kVec, bool kVec4>
__global__ void __launch_bounds__(kThreads) quantize_tiles(Fp8QuantizeArgs a, float* row_amax, float* col_amax) {
  // The tile is kept in the input's own type (bf16: half the shared memory, twice the blocks per SM).
  extern __shared__ __align__(16) unsigned char shared_raw[];
  float* row_run = reinterpret_cast<float*>(shared_raw);  // per tile row: amax of its 128 columns here
  float* col_run = row_run + kT;                          // per tile column: amax of its 128 rows here
  float* row_inv = col_run + kT;                          // the multipliers out's rows use
  float* col_inv = row_inv + kT;                          // the multipliers out_t's rows (our columns) use
  float* block_max = col_inv + kT;
  T* tile = reinterpret_cast<T*>(row_run + kRunFloats);   // [kT][kPitch]
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * kT, c0 = static_cast<int64_t>(blockIdx.x) * kT;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const T* in = static_cast<const T*>(a.in);
  const auto g = a.granularity;

  // Loads by 16-byte packs where the rows allow (kVec: cols a multiple of the pack, `in` aligned).
  constexpr int P = kVec ? Pack<T>::size : 1;
  for (int i = tid; i < kT * (kT / P); i += kThreads) {
    const int rr = i / (kT / P), cc = (i % (kT / P)) * P;
    const int64_t r = r0 + rr, c = c0 + cc;
    T* dst = tile + rr * kPitch + cc;
    if (kVec && r < a.rows && c + P <= a.cols) {
      const auto k = load_pack(in + r * a.cols + c);
#pragma unroll
      for (int j = 0; j < P; ++j) dst[j] = k.v[j];
    } else {
#pragma unroll
      for (int j = 0; j < P; ++j) dst[j] = (r < a.rows && c + j < a.cols) ? in[r * a.cols + c + j] : from_float<T>(0.f);
    }
  }
  __syncthreads();
  // The maxima: tile and block scales come from the tile; tensor and row scales from the amax
  // pass (then the quantize pass needs none here).
  const bool runs = kAmax || g == ScaleGranularity::tile || g == ScaleGranularity::block;
  if (runs) {
    // Row runs: each warp 16 rows, a lane 4 columns of each.
    for (int rr = warp * 16; rr < warp * 16 + 16; ++rr) {
      float m = 0.f;
      for (int cc = lane; cc < kT; cc += 32) m = fmaxf(m, fabsf(to_float(tile[rr * kPitch + cc])));
      for (int off = 16; off > 0; off >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
      if (lane == 0) row_run[rr] = m;
    }
    // Column runs: two threads a column, half the rows each.
    {
      const int cc = tid % kT, half = tid / kT;
      float m = 0.f;
      for (int rr = half * 64; rr < half * 64 + 64; ++rr) m = fmaxf(m, fabsf(to_float(tile[rr * kPitch + cc])));
      if (half == 1) row_inv[cc] = m;  // scratch until the multipliers are written
      __syncthreads();
      if (half == 0) col_run[cc] = fmaxf(m, row_inv[cc]);
    }
    __syncthreads();
    if (warp == 0) {
      float m = fmaxf(fmaxf(row_run[lane], row_run[lane + 32]), fmaxf(row_run[lane + 64], row_run[lane + 96]));
      for (int off = 16; off > 0; off >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
      if (lane == 0) *block_max = m;
    }
    __syncthreads();
  }
  if constexpr (kAmax) {  // row scales' first pass (tensor scales take tensor_amax)
    if (tid < kT) {
      if (r0 + tid < a.rows) atomic_max_nonneg(row_amax + r0 + tid, row_run[tid]);
      if (c0 + tid < a.cols) atomic_max_nonneg(col_amax + c0 + tid, col_run[tid]);
    }
    return;
  } else {
    const float fmax = a.format == Fp8Format::e4m3 ? kFp8E4m3Max : kFp8E5m2Max;
    if (tid < kT) {
      float rs, cs;  // the scales of row tid's run and of column tid's run
      switch (g) {
        case ScaleGranularity::tensor: rs = cs = scale_of(row_amax[0], fmax, a.pow2); break;
        case ScaleGranularity::row:
          rs = scale_of(r0 + tid < a.rows ? row_amax[r0 + tid] : 0.f, fmax, a.pow2);
          cs = scale_of(c0 + tid < a.cols ? col_amax[c0 + tid] : 0.f, fmax, a.pow2);
          break;
        case ScaleGranularity::tile:
          rs = scale_of(row_run[tid], fmax, a.pow2);
          cs = scale_of(col_run[tid], fmax, a.pow2);
          break;
        default: rs = cs = scale_of(*block_max, fmax, a.pow2);
      }
      row_inv[tid] = __frcp_rn(rs);
      col_inv[tid] = __frcp_rn(cs);
      // Each scale is written by the one block that owns it.
      const int64_t r = r0 + tid, c = c0 + tid;
      const bool first_col_tile = blockIdx.x == 0, first_row_tile = blockIdx.y == 0;
      const bool own_row = g == ScaleGranularity::tile || (g == ScaleGranularity::row && first_col_tile) ||
                           (tid == 0 && (g == ScaleGranularity::block || (first_col_tile && first_row_tile)));
      const bool own_col = g == ScaleGranularity::tile || (g == ScaleGranularity::row && first_row_tile) ||
                           (tid == 0 && (g == ScaleGranularity::block || (first_col_tile && first_row_tile)));
      if (a.out_scale && own_row && r < a.rows) a.out_scale[scale_index(g, a.rows, a.cols, r, c0)] = rs;
      // out_t is [cols, ld_t]: its row is our column c, its column our row.
      if (a.out_t_scale && own_col && c < a.cols) a.out_t_scale[scale_index(g, a.cols, a.ld_t, c, r0)] = cs;
    }
    __syncthreads();
    // Stores by 4 bytes where the rows allow (kVec4: cols and ld_t multiples of 4).
    if (a.out) {
      for (int i = tid; i < kT * kT / 4; i += kThreads) {
        const int rr = i / (kT / 4), cc = (i % (kT / 4)) * 4;
        const int64_t r = r0 + rr, c = c0 + cc;
        if (r >= a.rows) continue;
        uint8_t q[4];
#pragma unroll
        for (int j = 0; j < 4; ++j) q[j] = to_fp8(__fmul_rn(to_float(tile[rr * kPitch + cc + j]), row_inv[rr]), a.format);
        if (kVec4 && c + 4 <= a.cols) {
          *reinterpret_cast<uint32_t*>(a.out + r * a.cols + c) =
              q[0] | (uint32_t(q[1]) << 8) | (uint32_t(q[2]) << 16) | (uint32_t(q[3]) << 24);
        } else {
          for (int j = 0; j < 4 && c + j < a.cols; ++j) a.out[r * a.cols + c + j] = q[j];
        }
      }
    }
    if (a.out_t) {
      for (int i = tid; i < kT * kT / 4; i += kThreads) {
        const int cc = i / (kT / 4), rr = (i % (kT / 4)) * 4;
        const int64_t r = r0 + rr, c = c0 + cc;
        if (c >= a.cols || r >= a.ld_t) continue;
        uint8_t q[4];
#pragma unroll
        for (int j = 0; j < 4; ++j)
          q[j] = r + j < a.rows ? to_fp8(__fmul_rn(to_float(tile[(rr + j) * kPitch + cc]), col_inv[cc]), a.format) : 0;
        if (kVec4 && r + 4 <= a.ld_t) {
          *reinterpret_cast<uint32_t*>(a.out_t + c * a.ld_t + r) =
              q[0] | (uint32_t(q[1]) << 8) | (uint32_t(q[2]) << 16) | (uint32_t(q[3]) << 24);
        } else {
          for (int j = 0; j < 4 && r + j < a.ld_t; ++j) a.out_t[c * a.ld_t + r + j] = q[j];
        }
      }
    }
  }
}

template <class T, bool kVec, bool kVec4>
void launch_with(const Fp8QuantizeArgs& a, const dim3& grid, float* row_amax, float* col_amax, bool needs_amax,
                 cudaStream_t stream) {
  // Above the default 48 KiB of shared memory; set per launch (cheap), as the attribute is per device.
  TROUPE_CUDA_CHECK(cudaFuncSetAttribute(quantize_tiles<T, true, kVec, kVec4>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(shared_bytes<T>())));
  TROUPE_CUDA_CHECK(cudaFuncSetAttribute(quantize_tiles<T, false, kVec, kVec4>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(shared_bytes<T>())));
  if (needs_amax && a.granularity == ScaleGranularity::tensor) {
    const int64_t n = a.rows * a.cols, per_block = int64_t{kThreads} * (kVec ? Pack<T>::size : 1);
    const auto blocks = static_cast<unsigned>(std::min<int64_t>(ceil_div(n, per_block), 8 * device_sm_count()));
    tensor_amax<T, kVec><<<blocks, kThreads, 0, stream>>>(static_cast<const T*>(a.in), n, row_amax);
    TROUPE_CUDA_CHECK_LAUNCH();
  } else if (needs_amax) {
    quantize_tiles<T, true, kVec, kVec4><<<grid, kThreads, shared_bytes<T>(), stream>>>(a, row_amax, col_amax);
    TROUPE_CUDA_CHECK_LAUNCH();
  }
  quantize_tiles<T, false, kVec, kVec4><<<grid, kThreads, shared_bytes<T>(), stream>>>(a, row_amax, col_amax);
  TROUPE_CUDA_CHECK_LAUNCH();
}

template <class T>
void launch(const Fp8QuantizeArgs& a, float* workspace, cudaStream_t stream) {
  const int64_t row_tiles = ceil_div(a.out_t ? std::max(a.rows, a.ld_t) : a.rows, kT);
  const dim3 grid(static_cast<unsigned>(ceil_div(a.cols, kT)), static_cast<unsigned>(row_tiles));
  float *row_amax = workspace, *col_amax = workspace ? workspace + a.rows : nullptr;
  const bool needs_amax = a.granularity == ScaleGranularity::tensor || a.granularity == ScaleGranularity::row;
  if (needs_amax) {
    if (!workspace) throw std::invalid_argument("fp8_quantize: tensor and row scales need a workspace");
    TROUPE_CUDA_CHECK(cudaMemsetAsync(workspace, 0, sizeof(float) * fp8_quantize_workspace(a), stream));
  }
  const bool vec = a.cols % Pack<T>::size == 0 && pack_aligned({a.in});
  const auto aligned4 = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 4 == 0; };
  const bool vec4 = a.cols % 4 == 0 && (!a.out_t || a.ld_t % 4 == 0) && (!a.out || aligned4(a.out)) &&
                    (!a.out_t || aligned4(a.out_t));
  if (vec && vec4) launch_with<T, true, true>(a, grid, row_amax, col_amax, needs_amax, stream);
  else if (vec) launch_with<T, true, false>(a, grid, row_amax, col_amax, needs_amax, stream);
  else if (vec4) launch_with<T, false, true>(a, grid, row_amax, col_amax, needs_amax, stream);
  else launch_with<T, false, false>(a, grid, row_amax, col_amax, needs_amax, stream);
}

}  // namespace

int64_t fp8_quantize_workspace(const Fp8QuantizeArgs& a) {
  if (a.granularity == ScaleGranularity::tensor) return 1;
  if (a.granularity == ScaleGranularity::row) return a.rows + a.cols;
  return 0;
}

void fp8_quantize(const Fp8QuantizeArgs& a, float* workspace, cudaStream_t stream) {
  if (a.out_t && a.ld_t < a.rows) throw std::invalid_argument("fp8_quantize: ld_t is below rows");
  if (a.rows == 0 || a.cols == 0) return;
  if (a.in_dtype == Dtype::bf16) launch<__nv_bfloat16>(a, workspace, stream);
  else launch<float>(a, workspace, stream);
}

}  // namespace troupe::kernels
