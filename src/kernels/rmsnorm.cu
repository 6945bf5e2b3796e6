#include "kernels/cuda_check.h"
#include "kernels/device_math.cuh"
#include "kernels/rmsnorm.h"

#include <algorithm>
#include <stdexcept>

namespace troupe::kernels {

namespace {

// One warp per row: a row of even 16k elements fits a warp's loop, and rows are independent,
// so no block-wide synchronisation is needed in the forward. P elements per access (a 16-byte
// pack where dim allows, else 1); the second read of the row hits the L1 cache. With a
// residual, the row normalised is h = x + residual, rounded to T as a separate add would
// round it, and h is written to sum_out on the way.
template <class T, int P>
__global__ void rmsnorm_forward_kernel(T* out, float* rstd, const T* x, const T* weight, int64_t rows, int64_t dim,
                                       float eps, const T* residual, T* sum_out) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;
  const T* xr = x + row * dim;
  const T* ar = residual ? residual + row * dim : nullptr;
  auto load_row = [&](int64_t i, float (&v)[P]) {
    load_floats<P>(xr + i, v);
    if (!ar) return;
    float a[P];
    load_floats<P>(ar + i, a);
#pragma unroll
    for (int j = 0; j < P; ++j) v[j] = to_float(from_float<T>(v[j] + a[j]));
  };
  float sum_sq = 0.f;
  for (int64_t i = lane * P; i < dim; i += 32 * P) {
    float v[P];
    load_row(i, v);
    if (ar) store_floats<P>(sum_out + row * dim + i, v);
#pragma unroll
    for (int j = 0; j < P; ++j) sum_sq += v[j] * v[j];
  }
  const float r = rsqrtf(warp_sum(sum_sq) / static_cast<float>(dim) + eps);
  T* outr = out + row * dim;
  for (int64_t i = lane * P; i < dim; i += 32 * P) {
    float v[P], w[P];
    load_row(i, v);
    load_floats<P>(weight + i, w);
#pragma unroll
    for (int j = 0; j < P; ++j) v[j] = v[j] * r * w[j];
    store_floats<P>(outr + i, v);
  }
  if (lane == 0) rstd[row] = r;
}

// d(out)/dx for P elements of a row: dx = r·(w·g − x̂·mean(w·g·x̂)) + dresidual, x̂ = r·x; adds
// g·x̂ (the weight's gradient) to dw.
template <int P, class T>
__device__ __forceinline__ void norm_dx(T* dx, const T* x, const T* g, const T* w, const T* dres, float r,
                                        float mean_dot, float (&dw)[P]) {
  float xv[P], gv[P], wv[P], out[P], rv[P] = {};
  load_floats<P>(x, xv);
  load_floats<P>(g, gv);
  load_floats<P>(w, wv);
  if (dres) load_floats<P>(dres, rv);
#pragma unroll
  for (int j = 0; j < P; ++j) {
    const float xhat = xv[j] * r;
    out[j] = r * (wv[j] * gv[j] - xhat * mean_dot) + rv[j];
    dw[j] += gv[j] * xhat;
  }
  store_floats<P>(dx, out);
}

template <int P, class T>
__device__ __forceinline__ float norm_dot(const T* x, const T* g, const T* w, float r) {
  float xv[P], gv[P], wv[P], dot = 0.f;
  load_floats<P>(x, xv);
  load_floats<P>(g, gv);
  load_floats<P>(w, wv);
#pragma unroll
  for (int j = 0; j < P; ++j) dot += wv[j] * gv[j] * xv[j] * r;
  return dot;
}

// One warp per row at a time; a fixed grid walks the rows. A lane visits the same columns in
// every row (column (k·32 + lane)·P, k < K), so with K > 0 its share of dweight accumulates in
// registers across all its rows and meets the other warps' once per block in shared memory:
// per-element shared-memory atomics, whose same-address conflicts between warps cost more than
// the row's memory traffic, are left to rows too wide for registers (K = 0). Each block adds its
// sum to global memory once. `dresidual` (may be null): the gradient that reaches x by the
// residual path, added to dx.
template <class T, int P, int K>
__global__ void rmsnorm_backward_kernel(T* dx, float* dweight, const T* dout, const T* x, const T* weight,
                                        const float* rstd, int64_t rows, int64_t dim, const T* dresidual) {
  extern __shared__ float dweight_block[];
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) dweight_block[i] = 0.f;
  __syncthreads();
  const int warps_per_block = blockDim.x / 32, lane = threadIdx.x % 32;
  float acc[K > 0 ? K : 1][P] = {};
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * warps_per_block + threadIdx.x / 32; row < rows;
       row += static_cast<int64_t>(gridDim.x) * warps_per_block) {
    const T* xr = x + row * dim;
    const T* gr = dout + row * dim;
    const T* dres = dresidual ? dresidual + row * dim : nullptr;
    T* dxr = dx + row * dim;
    const float r = rstd[row];
    float dot = 0.f;
    if constexpr (K > 0) {
#pragma unroll
      for (int k = 0; k < K; ++k) {
        const int64_t i = (static_cast<int64_t>(k) * 32 + lane) * P;
        if (i < dim) dot += norm_dot<P>(xr + i, gr + i, weight + i, r);
      }
    } else {
      for (int64_t i = lane * P; i < dim; i += 32 * P) dot += norm_dot<P>(xr + i, gr + i, weight + i, r);
    }
    const float mean_dot = warp_sum(dot) / static_cast<float>(dim);
    if constexpr (K > 0) {
#pragma unroll
      for (int k = 0; k < K; ++k) {
        const int64_t i = (static_cast<int64_t>(k) * 32 + lane) * P;
        if (i < dim) norm_dx<P>(dxr + i, xr + i, gr + i, weight + i, dres ? dres + i : nullptr, r, mean_dot, acc[k]);
      }
    } else {
      for (int64_t i = lane * P; i < dim; i += 32 * P) {
        float part[P] = {};
        norm_dx<P>(dxr + i, xr + i, gr + i, weight + i, dres ? dres + i : nullptr, r, mean_dot, part);
#pragma unroll
        for (int j = 0; j < P; ++j) atomicAdd(&dweight_block[i + j], part[j]);
      }
    }
  }
  if constexpr (K > 0) {
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int64_t i = (static_cast<int64_t>(k) * 32 + lane) * P;
      if (i < dim)
#pragma unroll
        for (int j = 0; j < P; ++j) atomicAdd(&dweight_block[i + j], acc[k][j]);
    }
  }
  __syncthreads();
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) atomicAdd(&dweight[i], dweight_block[i]);
}

constexpr int kThreads = 256;

// Rows of `dim` elements can be read by whole packs: every row starts 16-byte aligned.
template <class T>
bool packs_fit(int64_t dim, std::initializer_list<const void*> ptrs) {
  return dim % Pack<T>::size == 0 && pack_aligned(ptrs);
}

template <class T>
struct BackwardArgs {
  T* dx;
  float* dweight;
  const T *dout, *x, *weight;
  const float* rstd;
  int64_t rows, dim;
  const T* dresidual;
};

// The smallest K (columns per lane, in packs) that covers dim while the accumulators fit in
// registers (K·P ≤ 64 floats per thread); wider rows take the shared-memory atomics (K = 0).
template <class T, int P, int K = 1>
void launch_backward(const BackwardArgs<T>& a, unsigned blocks, size_t shared, cudaStream_t stream) {
  if constexpr (K * P <= 64) {
    if (a.dim > int64_t{K} * 32 * P) return launch_backward<T, P, 2 * K>(a, blocks, shared, stream);
  }
  constexpr int kernel_k = K * P <= 64 ? K : 0;
  auto kernel = rmsnorm_backward_kernel<T, P, kernel_k>;
  // Above 48 KiB of shared memory (dim > 12288: the 405B flavor) a kernel must opt in.
  if (shared > 48 * 1024)
    TROUPE_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(shared)));
  kernel<<<blocks, kThreads, shared, stream>>>(a.dx, a.dweight, a.dout, a.x, a.weight, a.rstd, a.rows, a.dim,
                                               a.dresidual);
}

}  // namespace

// ----------------------------------------------------------------------------------------------
// launchers

void rmsnorm_forward(Dtype dtype, void* out, float* rstd, const void* x, const void* weight, int64_t rows, int64_t dim,
                     float eps, cudaStream_t stream, const void* residual, void* sum_out) {
  if ((residual == nullptr) != (sum_out == nullptr))
    throw std::invalid_argument("rmsnorm_forward: residual and sum_out go together");
  if (rows == 0) return;
  const auto blocks = static_cast<unsigned>((rows + kThreads / 32 - 1) / (kThreads / 32));
  dispatch_dtype(dtype, [&](auto t) {
    using T = decltype(t);
    auto o = static_cast<T*>(out);
    auto xp = static_cast<const T*>(x), w = static_cast<const T*>(weight), a = static_cast<const T*>(residual);
    auto sum = static_cast<T*>(sum_out);
    if (packs_fit<T>(dim, {out, x, weight, residual, sum_out}))
      rmsnorm_forward_kernel<T, Pack<T>::size><<<blocks, kThreads, 0, stream>>>(o, rstd, xp, w, rows, dim, eps, a, sum);
    else
      rmsnorm_forward_kernel<T, 1><<<blocks, kThreads, 0, stream>>>(o, rstd, xp, w, rows, dim, eps, a, sum);
  });
  TROUPE_CUDA_CHECK_LAUNCH();
}

void rmsnorm_backward(Dtype dtype, void* dx, float* dweight, const void* dout, const void* x, const void* weight,
                      const float* rstd, int64_t rows, int64_t dim, cudaStream_t stream, const void* dresidual) {
  if (rows == 0) return;
  const size_t shared = static_cast<size_t>(dim) * sizeof(float);
  const int64_t needed = (rows + kThreads / 32 - 1) / (kThreads / 32);
  const auto blocks = static_cast<unsigned>(std::min<int64_t>(needed, 4 * static_cast<int64_t>(device_sm_count())));
  dispatch_dtype(dtype, [&](auto t) {
    using T = decltype(t);
    const BackwardArgs<T> a{static_cast<T*>(dx), dweight, static_cast<const T*>(dout), static_cast<const T*>(x),
                            static_cast<const T*>(weight), rstd, rows, dim, static_cast<const T*>(dresidual)};
    if (packs_fit<T>(dim, {dx, dout, x, weight, dresidual}))
      launch_backward<T, Pack<T>::size>(a, blocks, shared, stream);
    else
      launch_backward<T, 1>(a, blocks, shared, stream);
  });
  TROUPE_CUDA_CHECK_LAUNCH();
}

}  // namespace troupe::kernels
