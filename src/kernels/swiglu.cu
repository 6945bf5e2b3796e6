#include "kernels/cuda_check.h"
#include "kernels/device_math.cuh"
#include "kernels/swiglu.h"

namespace troupe::kernels {

namespace {

__device__ __forceinline__ float sigmoid(float v) { return 1.f / (1.f + __expf(-v)); }

template <class T>
__global__ void swiglu_forward_kernel(T* out, const T* gate, const T* up, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const float g = to_float(gate[i]);
  out[i] = from_float<T>(g * sigmoid(g) * to_float(up[i]));
}

// d silu(g)/dg = σ(g)·(1 + g·(1 − σ(g)))
template <class T>
__global__ void swiglu_backward_kernel(T* dgate, T* dup, const T* dout, const T* gate, const T* up, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const float g = to_float(gate[i]), u = to_float(up[i]), d = to_float(dout[i]);
  const float s = sigmoid(g);
  dgate[i] = from_float<T>(d * u * s * (1.f + g * (1.f - s)));
  dup[i] = from_float<T>(d * g * s);
}

constexpr int kThreads = 256;

unsigned blocks_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

}  // namespace

// ----------------------------------------------------------------------------------------------
// launchers

void swiglu_forward(Dtype dtype, void* out, const void* gate, const void* up, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  dispatch_dtype(dtype, [&](auto t) {
    using T = decltype(t);
    swiglu_forward_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(static_cast<T*>(out), static_cast<const T*>(gate),
                                                                     static_cast<const T*>(up), n);
  });
  TROUPE_CUDA_CHECK_LAUNCH();
}

void swiglu_backward(Dtype dtype, void* dgate, void* dup, const void* dout, const void* gate, const void* up, int64_t n,
                     cudaStream_t stream) {
  if (n == 0) return;
  dispatch_dtype(dtype, [&](auto t) {
    using T = decltype(t);
    swiglu_backward_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(
        static_cast<T*>(dgate), static_cast<T*>(dup), static_cast<const T*>(dout), static_cast<const T*>(gate),
        static_cast<const T*>(up), n);
  });
  TROUPE_CUDA_CHECK_LAUNCH();
}

}  // namespace troupe::kernels
