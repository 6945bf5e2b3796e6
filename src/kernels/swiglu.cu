#include "kernels/cuda_check.h"
#include "kernels/device_math.cuh"
#include "kernels/swiglu.h"

namespace troupe::kernels {

namespace {

__device__ __forceinline__ float sigmoid(float v) { return 1.f / (1.f + __expf(-v)); }

__device__ __forceinline__ float swiglu_value(float g, float u) { return g * sigmoid(g) * u; }

// d silu(g)/dg = σ(g)·(1 + g·(1 − σ(g)))
__device__ __forceinline__ void swiglu_grads(float d, float g, float u, float& dg, float& du) {
  const float s = sigmoid(g);
  dg = d * u * s * (1.f + g * (1.f - s));
  du = d * g * s;
}

// One pack of elements per thread (the last thread takes the ragged tail element by element).
// `Vec` is false where a pointer is not 16-byte aligned: then each thread takes one element.
template <class T, bool Vec>
__global__ void swiglu_forward_kernel(T* out, const T* gate, const T* up, int64_t n) {
  constexpr int P = Vec ? Pack<T>::size : 1;
  const int64_t first = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * P;
  if (first >= n) return;
  if (Vec && first + P <= n) {
    const auto g = load_pack(gate + first), u = load_pack(up + first);
    Pack<T> o;
#pragma unroll
    for (int j = 0; j < Pack<T>::size; ++j) o.v[j] = from_float<T>(swiglu_value(to_float(g.v[j]), to_float(u.v[j])));
    store_pack(out + first, o);
    return;
  }
  for (int64_t i = first; i < n && i < first + P; ++i) out[i] = from_float<T>(swiglu_value(to_float(gate[i]), to_float(up[i])));
}

template <class T, bool Vec>
__global__ void swiglu_backward_kernel(T* dgate, T* dup, const T* dout, const T* gate, const T* up, int64_t n) {
  constexpr int P = Vec ? Pack<T>::size : 1;
  const int64_t first = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * P;
  if (first >= n) return;
  float dg, du;
  if (Vec && first + P <= n) {
    const auto d = load_pack(dout + first), g = load_pack(gate + first), u = load_pack(up + first);
    Pack<T> og, ou;
#pragma unroll
    for (int j = 0; j < Pack<T>::size; ++j) {
      swiglu_grads(to_float(d.v[j]), to_float(g.v[j]), to_float(u.v[j]), dg, du);
      og.v[j] = from_float<T>(dg);
      ou.v[j] = from_float<T>(du);
    }
    store_pack(dgate + first, og);
    store_pack(dup + first, ou);
    return;
  }
  for (int64_t i = first; i < n && i < first + P; ++i) {
    swiglu_grads(to_float(dout[i]), to_float(gate[i]), to_float(up[i]), dg, du);
    dgate[i] = from_float<T>(dg);
    dup[i] = from_float<T>(du);
  }
}

constexpr int kThreads = 256;

template <class T, bool Vec>
unsigned blocks_for(int64_t n) {
  constexpr int64_t per_block = kThreads * (Vec ? Pack<T>::size : 1);
  return static_cast<unsigned>((n + per_block - 1) / per_block);
}

}  // namespace

// ----------------------------------------------------------------------------------------------
// launchers

void swiglu_forward(Dtype dtype, void* out, const void* gate, const void* up, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  const bool vec = pack_aligned({out, gate, up});
  dispatch_dtype(dtype, [&](auto t) {
    using T = decltype(t);
    auto o = static_cast<T*>(out);
    auto g = static_cast<const T*>(gate), u = static_cast<const T*>(up);
    if (vec)
      swiglu_forward_kernel<T, true><<<blocks_for<T, true>(n), kThreads, 0, stream>>>(o, g, u, n);
    else
      swiglu_forward_kernel<T, false><<<blocks_for<T, false>(n), kThreads, 0, stream>>>(o, g, u, n);
  });
  TROUPE_CUDA_CHECK_LAUNCH();
}

void swiglu_backward(Dtype dtype, void* dgate, void* dup, const void* dout, const void* gate, const void* up, int64_t n,
                     cudaStream_t stream) {
  if (n == 0) return;
  const bool vec = pack_aligned({dgate, dup, dout, gate, up});
  dispatch_dtype(dtype, [&](auto t) {
    using T = decltype(t);
    auto dg = static_cast<T*>(dgate), du = static_cast<T*>(dup);
    auto d = static_cast<const T*>(dout), g = static_cast<const T*>(gate), u = static_cast<const T*>(up);
    if (vec)
      swiglu_backward_kernel<T, true><<<blocks_for<T, true>(n), kThreads, 0, stream>>>(dg, du, d, g, u, n);
    else
      swiglu_backward_kernel<T, false><<<blocks_for<T, false>(n), kThreads, 0, stream>>>(dg, du, d, g, u, n);
  });
  TROUPE_CUDA_CHECK_LAUNCH();
}

}  // namespace troupe::kernels
