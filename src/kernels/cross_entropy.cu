#include "kernels/cross_entropy.h"
#include "kernels/cuda_check.h"
#include "kernels/device_math.cuh"

namespace troupe::kernels {

namespace {

// One block per row. Pass 1: an online max/sum-of-exponentials over the row (one read).
// Pass 2: the loss from the target's logit, and the gradient written over the logits.
template <class T>
__global__ void cross_entropy_kernel(T* logits, float* losses, const int64_t* targets, int64_t vocab,
                                     float grad_scale) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  T* lr = logits + row * vocab;
  float m = -INFINITY, sum = 0.f;
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
    const float v = to_float(lr[i]);
    if (v > m) {
      sum = sum * __expf(m - v) + 1.f;
      m = v;
    } else {
      sum += __expf(v - m);
    }
  }
  const float row_max = block_max(m, scratch);
  const float row_sum = block_sum(m == -INFINITY ? 0.f : sum * __expf(m - row_max), scratch);
  const float log_sum = logf(row_sum) + row_max;
  const int64_t target = targets[row];
  const bool ignored = target < 0;
  if (threadIdx.x == 0) losses[row] = ignored ? 0.f : log_sum - to_float(lr[target]);
  if (grad_scale == 0.f) return;
  __syncthreads();  // every thread has read lr[target] before anyone overwrites it
  const float scale = ignored ? 0.f : grad_scale;
  const float inv_sum = 1.f / row_sum;
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
    const float p = __expf(to_float(lr[i]) - row_max) * inv_sum;
    lr[i] = from_float<T>(scale * (p - (i == target ? 1.f : 0.f)));
  }
}

}  // namespace

// ----------------------------------------------------------------------------------------------
// launchers

void cross_entropy_forward_backward(Dtype dtype, void* logits, float* losses, const int64_t* targets, int64_t rows,
                                    int64_t vocab, float grad_scale, cudaStream_t stream) {
  if (rows == 0) return;
  dispatch_dtype(dtype, [&](auto t) {
    using T = decltype(t);
    cross_entropy_kernel<T><<<static_cast<unsigned>(rows), 512, 0, stream>>>(static_cast<T*>(logits), losses, targets,
                                                                            vocab, grad_scale);
  });
  TROUPE_CUDA_CHECK_LAUNCH();
}

}  // namespace troupe::kernels
