#include "kernels/cuda_check.h"
#include "kernels/device_math.cuh"
#include "kernels/rmsnorm.h"

#include <algorithm>

namespace troupe::kernels {

namespace {

// One warp per row: a row of even 16k elements fits a warp's loop, and rows are independent,
// so no block-wide synchronisation is needed in the forward.
template <class T>
__global__ void rmsnorm_forward_kernel(T* out, float* rstd, const T* x, const T* weight, int64_t rows, int64_t dim,
                                       float eps) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;
  const T* xr = x + row * dim;
  float sum_sq = 0.f;
  for (int64_t i = lane; i < dim; i += 32) {
    const float v = to_float(xr[i]);
    sum_sq += v * v;
  }
  const float r = rsqrtf(warp_sum(sum_sq) / static_cast<float>(dim) + eps);
  T* outr = out + row * dim;
  for (int64_t i = lane; i < dim; i += 32) outr[i] = from_float<T>(to_float(xr[i]) * r * to_float(weight[i]));
  if (lane == 0) rstd[row] = r;
}

// A fixed grid walks the rows; each block sums its share of dweight in shared memory and adds
// it to global memory once, so global atomics scale with blocks × dim, not rows × dim.
template <class T>
__global__ void rmsnorm_backward_kernel(T* dx, float* dweight, const T* dout, const T* x, const T* weight,
                                        const float* rstd, int64_t rows, int64_t dim) {
  extern __shared__ float dweight_block[];
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) dweight_block[i] = 0.f;
  __syncthreads();
  const int warps_per_block = blockDim.x / 32, lane = threadIdx.x % 32;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * warps_per_block + threadIdx.x / 32; row < rows;
       row += static_cast<int64_t>(gridDim.x) * warps_per_block) {
    const T* xr = x + row * dim;
    const T* gr = dout + row * dim;
    const float r = rstd[row];
    // dx = r·(w·g − x̂·mean(w·g·x̂)) with x̂ = r·x
    float dot = 0.f;
    for (int64_t i = lane; i < dim; i += 32) dot += to_float(weight[i]) * to_float(gr[i]) * to_float(xr[i]) * r;
    const float mean_dot = warp_sum(dot) / static_cast<float>(dim);
    T* dxr = dx + row * dim;
    for (int64_t i = lane; i < dim; i += 32) {
      const float xhat = to_float(xr[i]) * r, g = to_float(gr[i]);
      dxr[i] = from_float<T>(r * (to_float(weight[i]) * g - xhat * mean_dot));
      atomicAdd(&dweight_block[i], g * xhat);  // shared-memory atomics: cheap, one per element
    }
  }
  __syncthreads();
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) atomicAdd(&dweight[i], dweight_block[i]);
}

constexpr int kThreads = 256;

int device_sm_count() {
  int device = 0, sms = 0;
  TROUPE_CUDA_CHECK(cudaGetDevice(&device));
  TROUPE_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  return sms;
}

}  // namespace

// ----------------------------------------------------------------------------------------------
// launchers

void rmsnorm_forward(Dtype dtype, void* out, float* rstd, const void* x, const void* weight, int64_t rows, int64_t dim,
                     float eps, cudaStream_t stream) {
  if (rows == 0) return;
  const auto blocks = static_cast<unsigned>((rows + kThreads / 32 - 1) / (kThreads / 32));
  dispatch_dtype(dtype, [&](auto t) {
    using T = decltype(t);
    rmsnorm_forward_kernel<T><<<blocks, kThreads, 0, stream>>>(static_cast<T*>(out), rstd, static_cast<const T*>(x),
                                                               static_cast<const T*>(weight), rows, dim, eps);
  });
  TROUPE_CUDA_CHECK_LAUNCH();
}

void rmsnorm_backward(Dtype dtype, void* dx, float* dweight, const void* dout, const void* x, const void* weight,
                      const float* rstd, int64_t rows, int64_t dim, cudaStream_t stream) {
  if (rows == 0) return;
  const size_t shared = static_cast<size_t>(dim) * sizeof(float);
  const int64_t needed = (rows + kThreads / 32 - 1) / (kThreads / 32);
  const auto blocks = static_cast<unsigned>(std::min<int64_t>(needed, 2 * static_cast<int64_t>(device_sm_count())));
  dispatch_dtype(dtype, [&](auto t) {
    using T = decltype(t);
    // Above 48 KiB of shared memory (dim > 12288: the 405B flavor) a kernel must opt in.
    if (shared > 48 * 1024)
      TROUPE_CUDA_CHECK(cudaFuncSetAttribute(rmsnorm_backward_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             static_cast<int>(shared)));
    rmsnorm_backward_kernel<T><<<blocks, kThreads, shared, stream>>>(
        static_cast<T*>(dx), dweight, static_cast<const T*>(dout), static_cast<const T*>(x),
        static_cast<const T*>(weight), rstd, rows, dim);
  });
  TROUPE_CUDA_CHECK_LAUNCH();
}

}  // namespace troupe::kernels
