#include <climits>

#include "kernels/cuda_check.h"
#include "kernels/device_math.cuh"
#include "kernels/moe_routing.h"

namespace troupe::kernels {

namespace {

// The larger (value, index) of the warp's lanes, ties to the lower index; every lane gets it.
__device__ __forceinline__ void warp_argmax(float& v, int& idx) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, v, offset);
    const int oi = __shfl_xor_sync(0xffffffffu, idx, offset);
    if (ov > v || (ov == v && oi < idx)) v = ov, idx = oi;
  }
}

// One warp per token; lane l holds experts l, l + 32, ... (PER of them).
template <class T, int PER>
__global__ void route_kernel(const T* logits, const float* bias, float* scores, int64_t* chosen,
                             unsigned long long* counts, RouteShape s) {
  const int lane = threadIdx.x % 32;
  const int64_t t = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  if (t >= s.tokens) return;  // the whole warp: t is the warp's
  const int E = static_cast<int>(s.experts);
  float sc[PER], ch[PER];
  float most = -INFINITY;
#pragma unroll
  for (int i = 0; i < PER; ++i) {
    const int e = lane + 32 * i;
    sc[i] = e < E ? to_float(logits[t * E + e]) : -INFINITY;
    most = fmaxf(most, sc[i]);
  }
  if (s.sigmoid) {
#pragma unroll
    for (int i = 0; i < PER; ++i) sc[i] = lane + 32 * i < E ? 1.f / (1.f + expf(-sc[i])) : 0.f;
  } else {
    most = warp_max(most);
    float sum = 0;
#pragma unroll
    for (int i = 0; i < PER; ++i) {
      sc[i] = lane + 32 * i < E ? expf(sc[i] - most) : 0.f;
      sum += sc[i];
    }
    sum = warp_sum(sum);
#pragma unroll
    for (int i = 0; i < PER; ++i) sc[i] /= sum;
  }
#pragma unroll
  for (int i = 0; i < PER; ++i) {
    const int e = lane + 32 * i;
    if (e < E) scores[t * E + e] = sc[i];
    ch[i] = e < E ? sc[i] + (bias ? bias[e] : 0.f) : -INFINITY;
  }
  if (s.groups > 1) {
    const int groups = static_cast<int>(s.groups), per_group = E / groups;
    float my_group = -INFINITY;  // lane g: group g's score
    for (int g = 0; g < groups; ++g) {
      float best = -INFINITY;
      int at = INT_MAX;
#pragma unroll
      for (int i = 0; i < PER; ++i) {
        const int e = lane + 32 * i;
        if (e < E && e / per_group == g && (ch[i] > best || at == INT_MAX)) best = ch[i], at = e;
      }
      warp_argmax(best, at);
      float second = -INFINITY;
      if (per_group > 1) {
#pragma unroll
        for (int i = 0; i < PER; ++i) {
          const int e = lane + 32 * i;
          if (e < E && e / per_group == g && e != at) second = fmaxf(second, ch[i]);
        }
        second = warp_max(second);
      }
      if (lane == g) my_group = best + (per_group > 1 ? second : 0.f);
    }
    unsigned kept = 0;
    for (int k = 0; k < s.groups_kept; ++k) {
      float v = lane < groups && !((kept >> lane) & 1u) ? my_group : -INFINITY;
      int idx = lane < groups && !((kept >> lane) & 1u) ? lane : INT_MAX;
      warp_argmax(v, idx);
      kept |= 1u << idx;
    }
#pragma unroll
    for (int i = 0; i < PER; ++i) {
      const int e = lane + 32 * i;
      if (e < E && !((kept >> (e / per_group)) & 1u)) ch[i] = -INFINITY;
    }
  }
  unsigned taken = 0;  // bit i: this lane's i-th expert is chosen
  for (int j = 0; j < s.top_k; ++j) {
    float best = -INFINITY;
    int at = INT_MAX;
#pragma unroll
    for (int i = 0; i < PER; ++i) {
      const int e = lane + 32 * i;
      if (e < E && !((taken >> i) & 1u) && (ch[i] > best || at == INT_MAX)) best = ch[i], at = e;
    }
    warp_argmax(best, at);
    if (at % 32 == lane) taken |= 1u << (at / 32);
    if (lane == 0) {
      chosen[t * s.top_k + j] = at;
      atomicAdd(counts + at, 1ull);
    }
  }
}

constexpr int kRowThreads = 128;

// P elements per access: a pack where rows and pointers allow it, else one.
template <class T, int P>
__global__ void permute_kernel(T* out, const T* x, const int64_t* positions, int64_t top_k, int64_t dim) {
  const int64_t i = blockIdx.x;
  const T* src = x + (i / top_k) * dim;
  T* dst = out + positions[i] * dim;
  for (int64_t c = static_cast<int64_t>(threadIdx.x) * P; c < dim; c += static_cast<int64_t>(blockDim.x) * P) {
    float f[P];
    load_floats<P>(src + c, f);
    store_floats<P>(dst + c, f);
  }
}

// dx[t] = sum_j dout[positions[t, j]]; with weights, out[t] = sum_j w[t, j] y[positions[t, j]].
template <class T, int P>
__global__ void gather_sum_kernel(T* out, const T* rows, const float* weights, const int64_t* positions, int64_t top_k,
                                  int64_t dim) {
  const int64_t t = blockIdx.x;
  for (int64_t c = static_cast<int64_t>(threadIdx.x) * P; c < dim; c += static_cast<int64_t>(blockDim.x) * P) {
    float sum[P] = {};
    for (int64_t j = 0; j < top_k; ++j) {
      float f[P];
      load_floats<P>(rows + positions[t * top_k + j] * dim + c, f);
      const float w = weights ? weights[t * top_k + j] : 1.f;
#pragma unroll
      for (int p = 0; p < P; ++p) sum[p] += w * f[p];
    }
    store_floats<P>(out + t * dim + c, sum);
  }
}

template <class T, int P>
__global__ void unpermute_backward_kernel(T* dy, float* dweights, const T* dout, const T* y, const float* weights,
                                          const int64_t* positions, int64_t top_k, int64_t dim) {
  __shared__ float scratch[32];
  const int64_t t = blockIdx.x;
  for (int64_t j = 0; j < top_k; ++j) {
    const int64_t row = positions[t * top_k + j];
    const float w = weights[t * top_k + j];
    float dot = 0;
    for (int64_t c = static_cast<int64_t>(threadIdx.x) * P; c < dim; c += static_cast<int64_t>(blockDim.x) * P) {
      float d[P], v[P], g[P];
      load_floats<P>(dout + t * dim + c, d);
      load_floats<P>(y + row * dim + c, v);
#pragma unroll
      for (int p = 0; p < P; ++p) {
        dot += d[p] * v[p];
        g[p] = w * d[p];
      }
      store_floats<P>(dy + row * dim + c, g);
    }
    dot = block_sum(dot, scratch);
    if (threadIdx.x == 0) dweights[t * top_k + j] = dot;
  }
}

// f(T{}, pack) with pack the elements per access: a whole pack when every row is whole packs and
// the pointers are aligned, else one.
template <class F>
void with_pack(Dtype dtype, int64_t dim, std::initializer_list<const void*> ptrs, F&& f) {
  dispatch_dtype(dtype, [&](auto t) {
    using T = decltype(t);
    if (dim % Pack<T>::size == 0 && pack_aligned(ptrs)) f(T{}, std::integral_constant<int, Pack<T>::size>{});
    else f(T{}, std::integral_constant<int, 1>{});
  });
}

unsigned grid_of(int64_t n) {
  if (n > INT_MAX) throw std::length_error("moe kernels: more than INT_MAX rows");
  return static_cast<unsigned>(n);
}

}  // namespace

void moe_route(Dtype dtype, const void* logits, const float* bias, float* scores, int64_t* chosen, int64_t* counts,
               const RouteShape& s, cudaStream_t stream) {
  if (s.tokens == 0) return;
  if (s.experts > kMaxRoutedExperts || s.groups > 32 || s.experts % s.groups != 0 || s.top_k > s.experts)
    throw std::invalid_argument("moe_route: unsupported routing shape");
  constexpr int kWarps = 8;
  const auto blocks = grid_of((s.tokens + kWarps - 1) / kWarps);
  auto* c = reinterpret_cast<unsigned long long*>(counts);
  const int64_t per = (s.experts + 31) / 32;
  dispatch_dtype(dtype, [&](auto t) {
    using T = decltype(t);
    auto l = static_cast<const T*>(logits);
    if (per <= 1) route_kernel<T, 1><<<blocks, kWarps * 32, 0, stream>>>(l, bias, scores, chosen, c, s);
    else if (per <= 2) route_kernel<T, 2><<<blocks, kWarps * 32, 0, stream>>>(l, bias, scores, chosen, c, s);
    else if (per <= 4) route_kernel<T, 4><<<blocks, kWarps * 32, 0, stream>>>(l, bias, scores, chosen, c, s);
    else if (per <= 8) route_kernel<T, 8><<<blocks, kWarps * 32, 0, stream>>>(l, bias, scores, chosen, c, s);
    else if (per <= 16) route_kernel<T, 16><<<blocks, kWarps * 32, 0, stream>>>(l, bias, scores, chosen, c, s);
    else route_kernel<T, 32><<<blocks, kWarps * 32, 0, stream>>>(l, bias, scores, chosen, c, s);
  });
  TROUPE_CUDA_CHECK_LAUNCH();
}

void moe_permute(Dtype dtype, void* out, const void* x, const int64_t* positions, int64_t tokens, int64_t top_k,
                 int64_t dim, cudaStream_t stream) {
  if (tokens * top_k == 0) return;
  with_pack(dtype, dim, {out, x}, [&](auto t, auto p) {
    using T = decltype(t);
    permute_kernel<T, decltype(p)::value><<<grid_of(tokens * top_k), kRowThreads, 0, stream>>>(
        static_cast<T*>(out), static_cast<const T*>(x), positions, top_k, dim);
  });
  TROUPE_CUDA_CHECK_LAUNCH();
}

void moe_permute_backward(Dtype dtype, void* dx, const void* dout, const int64_t* positions, int64_t tokens,
                          int64_t top_k, int64_t dim, cudaStream_t stream) {
  moe_unpermute(dtype, dx, dout, nullptr, positions, tokens, top_k, dim, stream);
}

void moe_unpermute(Dtype dtype, void* out, const void* y, const float* weights, const int64_t* positions,
                   int64_t tokens, int64_t top_k, int64_t dim, cudaStream_t stream) {
  if (tokens == 0) return;
  with_pack(dtype, dim, {out, y}, [&](auto t, auto p) {
    using T = decltype(t);
    gather_sum_kernel<T, decltype(p)::value><<<grid_of(tokens), kRowThreads, 0, stream>>>(
        static_cast<T*>(out), static_cast<const T*>(y), weights, positions, top_k, dim);
  });
  TROUPE_CUDA_CHECK_LAUNCH();
}

void moe_unpermute_backward(Dtype dtype, void* dy, float* dweights, const void* dout, const void* y,
                            const float* weights, const int64_t* positions, int64_t tokens, int64_t top_k, int64_t dim,
                            cudaStream_t stream) {
  if (tokens == 0) return;
  with_pack(dtype, dim, {dy, dout, y}, [&](auto t, auto p) {
    using T = decltype(t);
    unpermute_backward_kernel<T, decltype(p)::value><<<grid_of(tokens), kRowThreads, 0, stream>>>(
        static_cast<T*>(dy), dweights, static_cast<const T*>(dout), static_cast<const T*>(y), weights, positions,
        top_k, dim);
  });
  TROUPE_CUDA_CHECK_LAUNCH();
}

}  // namespace troupe::kernels
