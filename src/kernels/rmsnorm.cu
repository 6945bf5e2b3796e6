#include "kernels/cuda_check.h"
#include "kernels/device_math.cuh"
#include "kernels/rmsnorm.h"

#include <algorithm>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace troupe::kernels {

namespace {

// The columns a row kernel's thread owns, (k·blockDim.x + threadIdx.x)·P for k < K, read from
// `row` as floats; those at or past dim are left as they are.
template <int P, int K, class T>
__device__ __forceinline__ void load_columns(const T* row, int64_t dim, float (&v)[K][P]) {
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int64_t i = (static_cast<int64_t>(k) * blockDim.x + threadIdx.x) * P;
    if (i < dim) load_floats<P>(row + i, v[k]);
  }
}

// One block per row at a time; a fixed grid of blocks walks the rows. Thread t owns the columns
// (k·threads + t)·P, k < K (P: a 16-byte pack where dim allows, else 1), so the row is read once
// and stays in registers between its sum of squares and its output, and the weight is read once
// per block. With a residual, the row normalised is h = x + residual, rounded to T as a separate
// add would round it, and h is written to sum_out on the way.
template <class T, int P, int K>
__global__ void rmsnorm_forward_kernel(T* out, float* rstd, const T* x, const T* weight, int64_t rows, int64_t dim,
                                       float eps, const T* residual, T* sum_out) {
  __shared__ float scratch[32];
  const int64_t stride = static_cast<int64_t>(blockDim.x) * P;
  const int64_t first = static_cast<int64_t>(threadIdx.x) * P;
  float w[K][P];
  load_columns<P, K>(weight, dim, w);
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t base = row * dim;
    float v[K][P], sum_sq = 0.f;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int64_t i = first + k * stride;
      if (i >= dim) continue;
      load_floats<P>(x + base + i, v[k]);
      if (residual) {
        float a[P];
        load_floats<P>(residual + base + i, a);
#pragma unroll
        for (int j = 0; j < P; ++j) v[k][j] = to_float(from_float<T>(v[k][j] + a[j]));
        store_floats<P>(sum_out + base + i, v[k]);
      }
#pragma unroll
      for (int j = 0; j < P; ++j) sum_sq += v[k][j] * v[k][j];
    }
    const float r = rsqrtf(block_sum(sum_sq, scratch) / static_cast<float>(dim) + eps);
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int64_t i = first + k * stride;
      if (i >= dim) continue;
      float o[P];
#pragma unroll
      for (int j = 0; j < P; ++j) o[j] = v[k][j] * r * w[k][j];
      store_floats<P>(out + base + i, o);
    }
    if (threadIdx.x == 0) rstd[row] = r;
  }
}

// One block per row at a time; a fixed grid of blocks walks the rows. Thread t owns the columns
// (k·threads + t)·P, k < K, in every row, so the row's x and dout stay in its registers between
// the row's dot product and its dx, and its share of the weight's gradient accumulates in
// registers over all the block's rows. Each block writes that share to its own row of
// `partials` ([gridDim.x, dim] fp32), and column_sum_kernel adds the rows up in a fixed order:
// no atomics, so the weight's gradient is the same bits on every run. `dresidual` (may be null):
// the gradient that reaches x by the residual path, added to dx.
template <class T, int P, int K>
__global__ void rmsnorm_backward_kernel(T* dx, float* partials, const T* dout, const T* x, const T* weight,
                                        const float* rstd, int64_t rows, int64_t dim, const T* dresidual) {
  __shared__ float scratch[32];
  const int64_t stride = static_cast<int64_t>(blockDim.x) * P;
  const int64_t first = static_cast<int64_t>(threadIdx.x) * P;
  float w[K][P], acc[K][P] = {};
  load_columns<P, K>(weight, dim, w);
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t base = row * dim;
    const float r = rstd[row];
    float xv[K][P], gv[K][P], rv[K][P] = {}, dot = 0.f;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int64_t i = first + k * stride;
      if (i >= dim) continue;
      load_floats<P>(x + base + i, xv[k]);
      load_floats<P>(dout + base + i, gv[k]);
      if (dresidual) load_floats<P>(dresidual + base + i, rv[k]);
#pragma unroll
      for (int j = 0; j < P; ++j) dot += w[k][j] * gv[k][j] * xv[k][j];
    }
    const float mean_dot = block_sum(dot * r, scratch) / static_cast<float>(dim);
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int64_t i = first + k * stride;
      if (i >= dim) continue;
      float out[P];
#pragma unroll
      for (int j = 0; j < P; ++j) {
        const float xhat = xv[k][j] * r;
        out[j] = r * (w[k][j] * gv[k][j] - xhat * mean_dot) + rv[k][j];
        acc[k][j] += gv[k][j] * xhat;
      }
      store_floats<P>(dx + base + i, out);
    }
  }
  float* mine = partials + static_cast<int64_t>(blockIdx.x) * dim;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int64_t i = first + k * stride;
    if (i < dim)
#pragma unroll
      for (int j = 0; j < P; ++j) mine[i + j] = acc[k][j];
  }
}

// out[c] = Σ_b partials[b, c], summed in the same order on every run. A block of 32 × 8 threads
// takes 32 columns: 8 threads per column walk the rows, then one adds their 8 sums.
__global__ void column_sum_kernel(float* out, const float* partials, int64_t parts, int64_t dim) {
  __shared__ float sums[8][33];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * 32 + threadIdx.x;
  float sum = 0.f;
  if (c < dim)
    for (int64_t b = threadIdx.y; b < parts; b += 8) sum += partials[b * dim + c];
  sums[threadIdx.y][threadIdx.x] = sum;
  __syncthreads();
  if (threadIdx.y != 0 || c >= dim) return;
  for (int y = 1; y < 8; ++y) sum += sums[y][threadIdx.x];
  out[c] = sum;
}

constexpr int kThreads = 256;

// Rows of `dim` elements can be read by whole packs: every row starts 16-byte aligned.
template <class T>
bool packs_fit(int64_t dim, std::initializer_list<const void*> ptrs) {
  return dim % Pack<T>::size == 0 && pack_aligned(ptrs);
}

// Blocks of a row kernel's grid: no more than can be resident at once (a second wave would wait
// for the first's registers) and no more than rows. A block has at least 256 threads, so no
// more than 8 fit on a multiprocessor.
int64_t most_row_blocks(int64_t rows) { return std::min<int64_t>(rows, static_cast<int64_t>(device_sm_count()) * 8); }

// The most threads a block of `kernel` may have, given the registers it takes.
template <class Kernel>
int most_block_threads(Kernel kernel) {
  cudaFuncAttributes attributes{};
  TROUPE_CUDA_CHECK(cudaFuncGetAttributes(&attributes, kernel));
  return std::min(1024, attributes.maxThreadsPerBlock / 32 * 32);
}

// Launches a row kernel (a block per row at a time, each thread holding K packs of P columns in
// registers) with the smallest K, a power of two, whose kernel can have enough threads for a
// row. kernel_for(std::integral_constant<int, K>{}) names the kernel; launch(kernel, blocks,
// threads) launches it. Returns the blocks launched.
template <int P, int K = 1, class KernelFor, class Launch>
int64_t launch_rows(int64_t rows, int64_t dim, const KernelFor& kernel_for, const Launch& launch) {
  auto kernel = kernel_for(std::integral_constant<int, K>{});
  static const int most = most_block_threads(kernel);
  const int64_t needed = (dim + K * P - 1) / (K * P);
  if (needed > most) {
    if constexpr (K * P < 64)
      return launch_rows<P, 2 * K>(rows, dim, kernel_for, launch);
    else
      throw std::invalid_argument("rmsnorm: rows of " + std::to_string(dim) + " elements are too wide");
  }
  const int threads = static_cast<int>(std::max<int64_t>((needed + 31) / 32 * 32, std::min(kThreads, most)));
  int resident = 0;
  TROUPE_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&resident, kernel, threads, 0));
  const int64_t blocks = std::min(most_row_blocks(rows), static_cast<int64_t>(device_sm_count()) * std::max(resident, 1));
  launch(kernel, static_cast<unsigned>(blocks), threads);
  return blocks;
}

}  // namespace

// ----------------------------------------------------------------------------------------------
// launchers

void rmsnorm_forward(Dtype dtype, void* out, float* rstd, const void* x, const void* weight, int64_t rows, int64_t dim,
                     float eps, cudaStream_t stream, const void* residual, void* sum_out) {
  if ((residual == nullptr) != (sum_out == nullptr))
    throw std::invalid_argument("rmsnorm_forward: residual and sum_out go together");
  if (rows == 0) return;
  dispatch_dtype(dtype, [&](auto t) {
    using T = decltype(t);
    auto o = static_cast<T*>(out);
    auto xp = static_cast<const T*>(x), w = static_cast<const T*>(weight), a = static_cast<const T*>(residual);
    auto sum = static_cast<T*>(sum_out);
    auto launch = [&](auto kernel, unsigned blocks, int threads) {
      kernel<<<blocks, threads, 0, stream>>>(o, rstd, xp, w, rows, dim, eps, a, sum);
    };
    if (packs_fit<T>(dim, {out, x, weight, residual, sum_out}))
      launch_rows<Pack<T>::size>(
          rows, dim, [](auto k) { return rmsnorm_forward_kernel<T, Pack<T>::size, decltype(k)::value>; }, launch);
    else
      launch_rows<1>(rows, dim, [](auto k) { return rmsnorm_forward_kernel<T, 1, decltype(k)::value>; }, launch);
  });
  TROUPE_CUDA_CHECK_LAUNCH();
}

int64_t rmsnorm_backward_workspace(int64_t rows, int64_t dim) { return rows == 0 ? 0 : most_row_blocks(rows) * dim; }

void rmsnorm_backward(Dtype dtype, void* dx, float* dweight, const void* dout, const void* x, const void* weight,
                      const float* rstd, int64_t rows, int64_t dim, float* workspace, cudaStream_t stream,
                      const void* dresidual) {
  if (rows == 0) {
    TROUPE_CUDA_CHECK(cudaMemsetAsync(dweight, 0, static_cast<size_t>(dim) * sizeof(float), stream));
    return;
  }
  int64_t parts = 0;
  dispatch_dtype(dtype, [&](auto t) {
    using T = decltype(t);
    auto dxp = static_cast<T*>(dx);
    auto g = static_cast<const T*>(dout), xp = static_cast<const T*>(x), w = static_cast<const T*>(weight);
    auto dres = static_cast<const T*>(dresidual);
    auto launch = [&](auto kernel, unsigned blocks, int threads) {
      kernel<<<blocks, threads, 0, stream>>>(dxp, workspace, g, xp, w, rstd, rows, dim, dres);
    };
    if (packs_fit<T>(dim, {dx, dout, x, weight, dresidual}))
      parts = launch_rows<Pack<T>::size>(
          rows, dim, [](auto k) { return rmsnorm_backward_kernel<T, Pack<T>::size, decltype(k)::value>; }, launch);
    else
      parts = launch_rows<1>(rows, dim, [](auto k) { return rmsnorm_backward_kernel<T, 1, decltype(k)::value>; },
                             launch);
  });
  TROUPE_CUDA_CHECK_LAUNCH();
  column_sum_kernel<<<static_cast<unsigned>((dim + 31) / 32), dim3(32, 8), 0, stream>>>(dweight, workspace, parts, dim);
  TROUPE_CUDA_CHECK_LAUNCH();
}

}  // namespace troupe::kernels
