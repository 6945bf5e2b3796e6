// Device helpers shared by the kernels: storage <-> fp32 conversion, warp and block reductions,
// and the Dtype -> C++ type dispatch of the launchers.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <climits>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <stdexcept>

#include "kernels/element_types.h"

namespace troupe::kernels {

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <class T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// Multi-tensor kernels walk the tiles of a table of tensors; tile_end[k] counts the tiles of
// tensors 0..k. Which tensor holds `tile`, and where in it the tile starts.
struct TableTile {
  int k;
  int64_t start;
};
__device__ __forceinline__ TableTile find_tile(const int* tile_end, int tile, int64_t tile_elements) {
  int k = 0;
  while (tile_end[k] <= tile) ++k;
  return {k, static_cast<int64_t>(tile - (k ? tile_end[k - 1] : 0)) * tile_elements};
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// Sum over the block; every thread gets the result. `scratch` holds one float per warp.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  v = warp_sum(v);
  __syncthreads();  // scratch may still be read by a previous reduction
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : 0.f;
  return warp_sum(v);
}

__device__ __forceinline__ float block_max(float v, float* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : -INFINITY;
  return warp_max(v);
}

// 16 bytes of T, moved by one 128-bit load or store. The elementwise kernels are bound by memory
// bandwidth, and a 2-byte bf16 access per thread keeps too few bytes in flight to saturate HBM.
template <class T>
struct alignas(16) Pack {
  static constexpr int size = 16 / sizeof(T);
  T v[size];
};

template <class T>
__device__ __forceinline__ Pack<T> load_pack(const T* p) {
  return *reinterpret_cast<const Pack<T>*>(p);
}
template <class T>
__device__ __forceinline__ void store_pack(T* p, const Pack<T>& x) {
  *reinterpret_cast<Pack<T>*>(p) = x;
}

// P consecutive elements as floats: one 16-byte access when P is a pack's size (p aligned),
// element by element otherwise.
template <int P, class T>
__device__ __forceinline__ void load_floats(const T* p, float (&f)[P]) {
  if constexpr (P == Pack<T>::size) {
    const auto k = load_pack(p);
#pragma unroll
    for (int j = 0; j < P; ++j) f[j] = to_float(k.v[j]);
  } else {
#pragma unroll
    for (int j = 0; j < P; ++j) f[j] = to_float(p[j]);
  }
}
template <int P, class T>
__device__ __forceinline__ void store_floats(T* p, const float (&f)[P]) {
  if constexpr (P == Pack<T>::size) {
    Pack<T> k;
#pragma unroll
    for (int j = 0; j < P; ++j) k.v[j] = from_float<T>(f[j]);
    store_pack(p, k);
  } else {
#pragma unroll
    for (int j = 0; j < P; ++j) p[j] = from_float<T>(f[j]);
  }
}

// Host side: whether every pointer may be accessed by whole packs (null ones are not accessed).
inline bool pack_aligned(std::initializer_list<const void*> ptrs) {
  for (const void* p : ptrs)
    if (reinterpret_cast<std::uintptr_t>(p) % 16 != 0) return false;
  return true;
}

// Host side of find_tile: packs `items` into tables of at most `max_entries` (a table is a kernel
// parameter), numbering each entry's tiles after the previous entry's, and launches each table.
// numel(item) is an item's elements (0: skipped); fill(table, k, item) fills entry k, whose
// tile_end is already set; launch(table, entries, tiles) launches a full table.
template <class Table, class Item, class Numel, class Fill, class Launch>
void launch_tables(const Item* items, size_t n, int max_entries, int64_t tile_elements, Numel numel, Fill fill,
                   Launch launch) {
  for (size_t first = 0; first < n;) {
    Table table{};
    int entries = 0;
    int64_t tiles = 0;
    for (; first < n && entries < max_entries; ++first) {
      const int64_t elements = numel(items[first]);
      if (elements == 0) continue;
      const int64_t total = tiles + (elements + tile_elements - 1) / tile_elements;
      if (total > INT32_MAX) break;  // the next table takes it
      table.tile_end[entries] = static_cast<int>(tiles = total);
      fill(table, entries++, items[first]);
    }
    if (entries > 0) launch(table, entries, tiles);
    else if (first < n) throw std::length_error("kernels: a tensor of more than INT32_MAX tiles");
  }
}

// Calls f(T{}) with T the storage type of `dtype`.
template <class F>
void dispatch_dtype(Dtype dtype, F&& f) {
  switch (dtype) {
    case Dtype::f32: f(float{}); return;
    case Dtype::bf16: f(__nv_bfloat16{}); return;
  }
  throw std::invalid_argument("kernels: unsupported dtype");
}

}  // namespace troupe::kernels
