#include "kernels/cuda_check.h"
#include "kernels/device_math.cuh"
#include "kernels/rotary.h"

namespace troupe::kernels {

namespace {

// One thread per P elements (P/2 rotated pairs of one head): a 16-byte pack where head_dim
// allows, else one pair. `direction` is +1 for the forward rotation and −1 for its inverse.
template <class T, int P>
__global__ void rotary_kernel(T* out, const T* x, const float* cos, const float* sin, int64_t n, int64_t seq,
                              int64_t heads, int64_t half, float direction) {
  const int64_t first = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * P;
  if (first >= n) return;
  const int64_t p0 = first / 2;
  const int64_t i0 = p0 % half;
  const int64_t s = (p0 / (half * heads)) % seq;
  float v[P];
  load_floats<P>(x + first, v);
#pragma unroll
  for (int j = 0; j < P / 2; ++j) {
    const float c = cos[s * half + i0 + j], sn = direction * sin[s * half + i0 + j];
    const float x0 = v[2 * j], x1 = v[2 * j + 1];
    v[2 * j] = x0 * c - x1 * sn;
    v[2 * j + 1] = x0 * sn + x1 * c;
  }
  store_floats<P>(out + first, v);
}

void launch(Dtype dtype, void* out, const void* x, const float* cos, const float* sin, int64_t batch, int64_t seq,
            int64_t heads, int64_t head_dim, float direction, cudaStream_t stream) {
  const int64_t half = head_dim / 2, n = batch * seq * heads * head_dim;
  if (n == 0) return;
  constexpr int threads = 256;
  dispatch_dtype(dtype, [&](auto t) {
    using T = decltype(t);
    auto o = static_cast<T*>(out);
    auto xp = static_cast<const T*>(x);
    constexpr int P = Pack<T>::size;
    if (head_dim % P == 0 && pack_aligned({out, x})) {
      const auto blocks = static_cast<unsigned>((n / P + threads - 1) / threads);
      rotary_kernel<T, P><<<blocks, threads, 0, stream>>>(o, xp, cos, sin, n, seq, heads, half, direction);
    } else {
      const auto blocks = static_cast<unsigned>((n / 2 + threads - 1) / threads);
      rotary_kernel<T, 2><<<blocks, threads, 0, stream>>>(o, xp, cos, sin, n, seq, heads, half, direction);
    }
  });
  TROUPE_CUDA_CHECK_LAUNCH();
}

}  // namespace

// ----------------------------------------------------------------------------------------------
// launchers

void rotary_forward(Dtype dtype, void* out, const void* x, const float* cos, const float* sin, int64_t batch,
                    int64_t seq, int64_t heads, int64_t head_dim, cudaStream_t stream) {
  launch(dtype, out, x, cos, sin, batch, seq, heads, head_dim, 1.f, stream);
}

void rotary_backward(Dtype dtype, void* dx, const void* dout, const float* cos, const float* sin, int64_t batch,
                     int64_t seq, int64_t heads, int64_t head_dim, cudaStream_t stream) {
  launch(dtype, dx, dout, cos, sin, batch, seq, heads, head_dim, -1.f, stream);
}

}  // namespace troupe::kernels
