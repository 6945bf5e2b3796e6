#include "kernels/cross_entropy.h"
#include "kernels/cuda_check.h"
#include "kernels/device_math.cuh"

#include <algorithm>

namespace troupe::kernels {

namespace {

// Online max / sum of exponentials: folds P values into (m, sum) with one exponential each.
template <int P>
__device__ __forceinline__ void fold(const float (&v)[P], float& m, float& sum) {
  float vmax = v[0];
#pragma unroll
  for (int j = 1; j < P; ++j) vmax = fmaxf(vmax, v[j]);
  if (vmax > m) {
    sum *= __expf(m - vmax);
    m = vmax;
  }
#pragma unroll
  for (int j = 0; j < P; ++j) sum += __expf(v[j] - m);
}

// One block's pass over a row of n logits: its max and sum of exponentials (relative to that
// max), each thread folding P elements per access (a 16-byte pack, or 1 where the rows are not
// 16-byte aligned), the ragged tail element by element. The reductions sync before they write
// `scratch`, so the next row may reuse it.
template <class T, int P>
__device__ __forceinline__ float2 row_max_and_sum(const T* lr, int64_t n, float* scratch) {
  const int64_t body = n / P * P;
  float m = -INFINITY, sum = 0.f;
  for (int64_t i = static_cast<int64_t>(threadIdx.x) * P; i < body; i += static_cast<int64_t>(blockDim.x) * P) {
    float v[P];
    load_floats<P>(lr + i, v);
    fold<P>(v, m, sum);
  }
  for (int64_t i = body + threadIdx.x; i < n; i += blockDim.x) {
    const float v[1] = {to_float(lr[i])};
    fold<1>(v, m, sum);
  }
  const float row_max = block_max(m, scratch);
  return make_float2(row_max, block_sum(m == -INFINITY ? 0.f : sum * __expf(m - row_max), scratch));
}

// A row of n logits overwritten by their gradient, scale · (exp(x − max) / sum − onehot(target));
// a target outside [0, n) marks no element.
template <class T, int P>
__device__ __forceinline__ void write_softmax_gradient(T* lr, int64_t n, float row_max, float inv_sum, float scale,
                                                       int64_t target) {
  const int64_t body = n / P * P;
  for (int64_t i = static_cast<int64_t>(threadIdx.x) * P; i < body; i += static_cast<int64_t>(blockDim.x) * P) {
    float v[P];
    load_floats<P>(lr + i, v);
#pragma unroll
    for (int j = 0; j < P; ++j) v[j] = scale * (__expf(v[j] - row_max) * inv_sum - (i + j == target ? 1.f : 0.f));
    store_floats<P>(lr + i, v);
  }
  for (int64_t i = body + threadIdx.x; i < n; i += blockDim.x)
    lr[i] = from_float<T>(scale * (__expf(to_float(lr[i]) - row_max) * inv_sum - (i == target ? 1.f : 0.f)));
}

// A persistent grid walks the rows, one block per row at a time. Pass 1: the online max and
// sum of exponentials over the row (one read). Pass 2: the loss from the target's logit, and
// the gradient written over the logits.
template <class T, int P>
__global__ void cross_entropy_kernel(T* logits, float* losses, const int64_t* targets, int64_t rows, int64_t vocab,
                                     float grad_scale, const float* device_scale) {
  __shared__ float scratch[32];
  const float scale_all = grad_scale * (device_scale ? *device_scale : 1.f);
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    T* lr = logits + row * vocab;
    const float2 stats = row_max_and_sum<T, P>(lr, vocab, scratch);
    const int64_t target = targets[row];
    const bool ignored = target < 0;
    if (threadIdx.x == 0) losses[row] = ignored ? 0.f : logf(stats.y) + stats.x - to_float(lr[target]);
    if (grad_scale == 0.f) continue;
    __syncthreads();  // every thread has read lr[target] before anyone overwrites it
    write_softmax_gradient<T, P>(lr, vocab, stats.x, 1.f / stats.y, ignored ? 0.f : scale_all, target);
  }
}

// Loss parallel, one rank's share [start, start + local) of the vocabulary per row. Stats: the
// online max and sum of exponentials over the share (one read), and the target's logit where the
// share holds it (0 elsewhere).
template <class T, int P>
__global__ void vocab_share_stats_kernel(const T* logits, const int64_t* targets, int64_t rows, int64_t local,
                                         int64_t start, float* row_max, float* sum_exp, float* target_logit) {
  __shared__ float scratch[32];
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* lr = logits + row * local;
    const float2 stats = row_max_and_sum<T, P>(lr, local, scratch);
    if (threadIdx.x == 0) {
      const int64_t t = targets[row] - start;
      row_max[row] = stats.x;
      sum_exp[row] = stats.y;
      target_logit[row] = targets[row] >= 0 && t >= 0 && t < local ? to_float(lr[t]) : 0.f;
    }
  }
}

// The share's logits overwritten by their gradient with the group's max and sum of each row;
// scale = *inv_count on counted rows, 0 on ignored ones.
template <class T, int P>
__global__ void vocab_share_gradient_kernel(T* logits, const int64_t* targets, int64_t rows, int64_t local,
                                            int64_t start, const float* row_max, const float* sum_exp,
                                            const float* inv_count) {
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const float scale = targets[row] < 0 ? 0.f : *inv_count;
    const int64_t target = targets[row] < 0 ? -1 : targets[row] - start;  // outside [0, local): not here
    write_softmax_gradient<T, P>(logits + row * local, local, row_max[row], 1.f / sum_exp[row], scale, target);
  }
}

template <class T>
__global__ void scale_unless_one_kernel(T* x, int64_t n, const float* scale) {
  const float s = *scale;
  if (s == 1.f) return;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    x[i] = from_float<T>(to_float(x[i]) * s);
}

}  // namespace

// ----------------------------------------------------------------------------------------------
// launchers

void scale_unless_one(Dtype dtype, void* x, int64_t n, const float* scale, cudaStream_t stream) {
  if (n == 0) return;
  const auto blocks = static_cast<unsigned>(std::min<int64_t>((n + 255) / 256, 8 * int64_t{device_sm_count()}));
  dispatch_dtype(dtype, [&](auto t) {
    using T = decltype(t);
    scale_unless_one_kernel<T><<<blocks, 256, 0, stream>>>(static_cast<T*>(x), n, scale);
  });
  TROUPE_CUDA_CHECK_LAUNCH();
}

void cross_entropy_forward_backward(Dtype dtype, void* logits, float* losses, const int64_t* targets, int64_t rows,
                                    int64_t vocab, float grad_scale, cudaStream_t stream, const float* device_scale) {
  if (rows == 0) return;
  // One 1024-thread block per SM: the rows in flight (132 × 256 KB for a 128k bf16 vocabulary
  // on an H100) fit in L2, so the second pass over a row reads it from L2 rather than HBM.
  constexpr int threads = 1024;
  const auto blocks = static_cast<unsigned>(std::min<int64_t>(rows, device_sm_count()));
  dispatch_dtype(dtype, [&](auto t) {
    using T = decltype(t);
    auto l = static_cast<T*>(logits);
    constexpr int P = Pack<T>::size;
    if (pack_aligned({logits}) && vocab % P == 0)
      cross_entropy_kernel<T, P><<<blocks, threads, 0, stream>>>(l, losses, targets, rows, vocab, grad_scale,
                                                                 device_scale);
    else
      cross_entropy_kernel<T, 1><<<blocks, threads, 0, stream>>>(l, losses, targets, rows, vocab, grad_scale,
                                                                 device_scale);
  });
  TROUPE_CUDA_CHECK_LAUNCH();
}

void vocab_share_stats(Dtype dtype, const void* logits, const int64_t* targets, int64_t rows, int64_t local,
                       int64_t start, float* row_max, float* sum_exp, float* target_logit, cudaStream_t stream) {
  if (rows == 0) return;
  constexpr int threads = 1024;
  const auto blocks = static_cast<unsigned>(std::min<int64_t>(rows, 2 * int64_t{device_sm_count()}));
  dispatch_dtype(dtype, [&](auto t) {
    using T = decltype(t);
    auto l = static_cast<const T*>(logits);
    constexpr int P = Pack<T>::size;
    if (pack_aligned({logits}) && local % P == 0)
      vocab_share_stats_kernel<T, P><<<blocks, threads, 0, stream>>>(l, targets, rows, local, start, row_max, sum_exp,
                                                                     target_logit);
    else
      vocab_share_stats_kernel<T, 1><<<blocks, threads, 0, stream>>>(l, targets, rows, local, start, row_max, sum_exp,
                                                                     target_logit);
  });
  TROUPE_CUDA_CHECK_LAUNCH();
}

void vocab_share_gradient(Dtype dtype, void* logits, const int64_t* targets, int64_t rows, int64_t local,
                          int64_t start, const float* row_max, const float* sum_exp, const float* inv_count,
                          cudaStream_t stream) {
  if (rows == 0) return;
  constexpr int threads = 1024;
  const auto blocks = static_cast<unsigned>(std::min<int64_t>(rows, 2 * int64_t{device_sm_count()}));
  dispatch_dtype(dtype, [&](auto t) {
    using T = decltype(t);
    auto l = static_cast<T*>(logits);
    constexpr int P = Pack<T>::size;
    if (pack_aligned({logits}) && local % P == 0)
      vocab_share_gradient_kernel<T, P><<<blocks, threads, 0, stream>>>(l, targets, rows, local, start, row_max,
                                                                        sum_exp, inv_count);
    else
      vocab_share_gradient_kernel<T, 1><<<blocks, threads, 0, stream>>>(l, targets, rows, local, start, row_max,
                                                                        sum_exp, inv_count);
  });
  TROUPE_CUDA_CHECK_LAUNCH();
}

}  // namespace troupe::kernels
