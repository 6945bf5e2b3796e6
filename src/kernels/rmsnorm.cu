#include "kernels/cuda_check.h"
#include "kernels/device_math.cuh"
#include "kernels/rmsnorm.h"

#include <algorithm>
#include <stdexcept>
#include <string>

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
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int64_t i = first + k * stride;
    if (i < dim) load_floats<P>(weight + i, w[k]);
  }
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

// Blocks of the backward's grid: no more than can be resident at once (a second wave would
// wait for the first's registers) and no more than rows. A block has at least 256 threads, so
// no more than 8 fit on a multiprocessor.
int64_t most_backward_blocks(int64_t rows) {
  return std::min<int64_t>(rows, static_cast<int64_t>(device_sm_count()) * 8);
}

template <class T>
struct BackwardArgs {
  T* dx;
  float* partials;
  const T *dout, *x, *weight;
  const float* rstd;
  int64_t rows, dim;
  const T* dresidual;
};

// The most threads a block of `kernel` may have, given the registers it takes.
template <class Kernel>
int most_block_threads(Kernel kernel) {
  cudaFuncAttributes attributes{};
  TROUPE_CUDA_CHECK(cudaFuncGetAttributes(&attributes, kernel));
  return std::min(1024, attributes.maxThreadsPerBlock / 32 * 32);
}

// The smallest K (packs of P columns per thread, a power of two) whose kernel can have enough
// threads for a row; each thread then holds K·P columns of x, dout, the residual's gradient, the
// weight and the weight's gradient in registers. Returns the blocks launched.
template <class T, int P, int K = 1>
int64_t launch_backward(const BackwardArgs<T>& a, cudaStream_t stream) {
  auto kernel = rmsnorm_backward_kernel<T, P, K>;
  static const int most = most_block_threads(kernel);
  const int64_t needed = (a.dim + K * P - 1) / (K * P);
  if (needed > most) {
    if constexpr (K * P < 64)
      return launch_backward<T, P, 2 * K>(a, stream);
    else
      throw std::invalid_argument("rmsnorm_backward: rows of " + std::to_string(a.dim) + " elements are too wide");
  }
  const int threads = static_cast<int>(std::max<int64_t>((needed + 31) / 32 * 32, std::min(kThreads, most)));
  int resident = 0;
  TROUPE_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&resident, kernel, threads, 0));
  const int64_t blocks =
      std::min(most_backward_blocks(a.rows), static_cast<int64_t>(device_sm_count()) * std::max(resident, 1));
  kernel<<<static_cast<unsigned>(blocks), threads, 0, stream>>>(a.dx, a.partials, a.dout, a.x, a.weight, a.rstd,
                                                                a.rows, a.dim, a.dresidual);
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

int64_t rmsnorm_backward_workspace(int64_t rows, int64_t dim) { return rows == 0 ? 0 : most_backward_blocks(rows) * dim; }

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
    const BackwardArgs<T> a{static_cast<T*>(dx), workspace, static_cast<const T*>(dout), static_cast<const T*>(x),
                            static_cast<const T*>(weight), rstd, rows, dim, static_cast<const T*>(dresidual)};
    if (packs_fit<T>(dim, {dx, dout, x, weight, dresidual}))
      parts = launch_backward<T, Pack<T>::size>(a, stream);
    else
      parts = launch_backward<T, 1>(a, stream);
  });
  TROUPE_CUDA_CHECK_LAUNCH();
  column_sum_kernel<<<static_cast<unsigned>((dim + 31) / 32), dim3(32, 8), 0, stream>>>(dweight, workspace, parts, dim);
  TROUPE_CUDA_CHECK_LAUNCH();
}

}  // namespace troupe::kernels
