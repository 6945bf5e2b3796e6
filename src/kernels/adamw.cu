#include <algorithm>
#include <cmath>

#include "kernels/adamw.h"
#include "kernels/cuda_check.h"
#include "kernels/device_math.cuh"

namespace troupe::kernels {

namespace {

constexpr int kThreads = 256;
constexpr int kUnroll = 4;                          // float4 groups per thread and tile
constexpr int64_t kTile = kThreads * 4 * kUnroll;  // elements a block takes at a time
// Tensors per launch: the table travels as a kernel parameter (at most 4 KiB).
constexpr int kMaxTensors = 48;

struct TensorTable {
  float* param[kMaxTensors];
  const float* grad[kMaxTensors];
  float* exp_avg[kMaxTensors];
  float* exp_avg_sq[kMaxTensors];
  __nv_bfloat16* copy[kMaxTensors];  // may be null
  int64_t numel[kMaxTensors];
  int tile_end[kMaxTensors];  // tiles of tensors 0..k
  bool aligned[kMaxTensors];  // fp32 tensors 16-byte aligned, the copy 8: whole float4 accesses
  int count;
};

struct Scalars {
  float lr, beta1, beta2, eps, weight_decay, step_size, inv_bias2_sqrt;
  bool decoupled;
};

// One IEEE division and square root per element; the gradient's divisor and the second bias
// correction are applied as reciprocals (ATen divides by them: results differ by an ulp at most).
__device__ __forceinline__ void adam_element(float& p, float g, float& m, float& v, const Scalars& s,
                                             float inv_divisor) {
  g *= inv_divisor;
  if (s.decoupled)
    p -= s.lr * s.weight_decay * p;
  else
    g += s.weight_decay * p;
  m = s.beta1 * m + (1.f - s.beta1) * g;
  v = s.beta2 * v + (1.f - s.beta2) * g * g;
  p -= __fdiv_rn(s.step_size * m, __fsqrt_rn(v) * s.inv_bias2_sqrt + s.eps);
}

// A fixed grid walks the tiles of all tables' tensors. Each thread loads its kUnroll groups of
// four before it computes any, so that enough bytes are in flight to keep HBM busy.
__global__ void adamw_kernel(TensorTable t, Scalars s, const float* grad_divisor) {
  const float inv_divisor = grad_divisor ? __frcp_rn(*grad_divisor) : 1.f;
  const int tiles = t.tile_end[t.count - 1];
  for (int tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const auto [k, start] = find_tile(t.tile_end, tile, kTile);
    const int64_t end = min(start + kTile, t.numel[k]);
    float* P = t.param[k];
    const float* G = t.grad[k];
    float* M = t.exp_avg[k];
    float* V = t.exp_avg_sq[k];
    __nv_bfloat16* C = t.copy[k];
    if (t.aligned[k] && start + kTile <= end) {
      float4 p[kUnroll], g[kUnroll], m[kUnroll], v[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t i = start + (static_cast<int64_t>(u) * kThreads + threadIdx.x) * 4;
        p[u] = *reinterpret_cast<const float4*>(P + i);
        g[u] = *reinterpret_cast<const float4*>(G + i);
        m[u] = *reinterpret_cast<const float4*>(M + i);
        v[u] = *reinterpret_cast<const float4*>(V + i);
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t i = start + (static_cast<int64_t>(u) * kThreads + threadIdx.x) * 4;
        adam_element(p[u].x, g[u].x, m[u].x, v[u].x, s, inv_divisor);
        adam_element(p[u].y, g[u].y, m[u].y, v[u].y, s, inv_divisor);
        adam_element(p[u].z, g[u].z, m[u].z, v[u].z, s, inv_divisor);
        adam_element(p[u].w, g[u].w, m[u].w, v[u].w, s, inv_divisor);
        *reinterpret_cast<float4*>(P + i) = p[u];
        *reinterpret_cast<float4*>(M + i) = m[u];
        *reinterpret_cast<float4*>(V + i) = v[u];
        if (C) {
          const __nv_bfloat162 c[2] = {__floats2bfloat162_rn(p[u].x, p[u].y), __floats2bfloat162_rn(p[u].z, p[u].w)};
          *reinterpret_cast<uint2*>(C + i) = *reinterpret_cast<const uint2*>(c);
        }
      }
      continue;
    }
    // A tensor's last, partial tile, or a tensor not aligned for float4: element by element.
    for (int64_t i = start + threadIdx.x; i < end; i += kThreads) {
      float p = P[i], m = M[i], v = V[i];
      adam_element(p, G[i], m, v, s, inv_divisor);
      P[i] = p;
      M[i] = m;
      V[i] = v;
      if (C) C[i] = __float2bfloat16_rn(p);
    }
  }
}

bool aligned8(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 8 == 0; }  // the copy's 4 bf16 stores

}  // namespace

void adamw_update(const AdamTensor* tensors, size_t count, const AdamHyper& h, int64_t step, const float* grad_divisor,
                  cudaStream_t stream) {
  if (step < 1) throw std::invalid_argument("adamw_update: step counts from 1");
  const double bias1 = 1 - std::pow(h.beta1, static_cast<double>(step));
  const double bias2 = 1 - std::pow(h.beta2, static_cast<double>(step));
  const Scalars s{static_cast<float>(h.lr),           static_cast<float>(h.beta1), static_cast<float>(h.beta2),
                  static_cast<float>(h.eps),          static_cast<float>(h.weight_decay),
                  static_cast<float>(h.lr / bias1),   static_cast<float>(1 / std::sqrt(bias2)),
                  h.decoupled};
  const int64_t grid_limit = static_cast<int64_t>(device_sm_count()) * 4;
  launch_tables<TensorTable>(
      tensors, count, kMaxTensors, kTile, [](const AdamTensor& a) { return a.numel; },
      [](TensorTable& t, int k, const AdamTensor& a) {
        t.param[k] = a.param, t.grad[k] = a.grad, t.exp_avg[k] = a.exp_avg, t.exp_avg_sq[k] = a.exp_avg_sq;
        t.numel[k] = a.numel;
        t.copy[k] = static_cast<__nv_bfloat16*>(a.bf16_copy);
        t.aligned[k] = pack_aligned({a.param, a.grad, a.exp_avg, a.exp_avg_sq}) && aligned8(a.bf16_copy);
      },
      [&](TensorTable& t, int entries, int64_t tiles) {
        t.count = entries;
        adamw_kernel<<<static_cast<unsigned>(std::min(tiles, grid_limit)), kThreads, 0, stream>>>(t, s, grad_divisor);
        TROUPE_CUDA_CHECK_LAUNCH();
      });
}

}  // namespace troupe::kernels
