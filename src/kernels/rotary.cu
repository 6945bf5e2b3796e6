#include "kernels/cuda_check.h"
#include "kernels/device_math.cuh"
#include "kernels/rotary.h"

namespace troupe::kernels {

namespace {

// One thread per rotated pair; `direction` is +1 for the forward rotation and −1 for its inverse.
template <class T>
__global__ void rotary_kernel(T* out, const T* x, const float* cos, const float* sin, int64_t pairs, int64_t seq,
                              int64_t heads, int64_t half, float direction) {
  const int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p >= pairs) return;
  const int64_t i = p % half;
  const int64_t s = (p / (half * heads)) % seq;
  const float c = cos[s * half + i], sn = direction * sin[s * half + i];
  const float x0 = to_float(x[2 * p]), x1 = to_float(x[2 * p + 1]);
  out[2 * p] = from_float<T>(x0 * c - x1 * sn);
  out[2 * p + 1] = from_float<T>(x0 * sn + x1 * c);
}

void launch(Dtype dtype, void* out, const void* x, const float* cos, const float* sin, int64_t batch, int64_t seq,
            int64_t heads, int64_t head_dim, float direction, cudaStream_t stream) {
  const int64_t half = head_dim / 2, pairs = batch * seq * heads * half;
  if (pairs == 0) return;
  constexpr int threads = 256;
  const auto blocks = static_cast<unsigned>((pairs + threads - 1) / threads);
  dispatch_dtype(dtype, [&](auto t) {
    using T = decltype(t);
    rotary_kernel<T><<<blocks, threads, 0, stream>>>(static_cast<T*>(out), static_cast<const T*>(x), cos, sin, pairs,
                                                     seq, heads, half, direction);
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
