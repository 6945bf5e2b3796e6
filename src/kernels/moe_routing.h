// A mixture of experts' routing and token permutation (DeepSeek V3's and Qwen3 MoE's):
// - route: per token, the router's scores (softmax over the experts, or each one's sigmoid), and
//   its top_k experts by score + bias among the experts of its groups_kept best groups (a group
//   scores the sum of its best two members; one in a group of one). Ties go to the lower index.
//   Counts the tokens per expert as it chooses (no host sync for them).
// - permute: the token copies in expert order: row positions[t * top_k + j] is token t's copy
//   for its j-th choice; its backward adds each token's copies back.
// - unpermute: each token's weighted sum of its copies' expert outputs; its backward the
//   copies' gradients and the weights'.
// One warp routes a token; one block moves a row. Storage f32 or bf16, arithmetic fp32.
#pragma once
#include <cstdint>

#include "kernels/element_types.h"

namespace troupe::kernels {

struct RouteShape {
  int64_t tokens = 0, experts = 0, top_k = 1;
  int64_t groups = 1, groups_kept = 1;  // group-limited routing when groups > 1 (at most 32)
  bool sigmoid = false;                 // sigmoid scores, else softmax
};

// The largest routing the kernel takes (experts per warp lane x 32).
constexpr int64_t kMaxRoutedExperts = 1024;

// logits [tokens, experts] (dtype); bias [experts] or null. Writes scores [tokens, experts],
// chosen [tokens, top_k] and adds to counts [experts] (zero it first).
void moe_route(Dtype dtype, const void* logits, const float* bias, float* scores, int64_t* chosen, int64_t* counts,
               const RouteShape& shape, cudaStream_t stream);
void moe_route_ref(const float* logits, const float* bias, float* scores, int64_t* chosen, int64_t* counts,
                   const RouteShape& shape);

// x [tokens, dim] -> out [tokens * top_k, dim]: out[positions[t * top_k + j]] = x[t].
void moe_permute(Dtype dtype, void* out, const void* x, const int64_t* positions, int64_t tokens, int64_t top_k,
                 int64_t dim, cudaStream_t stream);
// dx[t] = sum over j of dout[positions[t * top_k + j]].
void moe_permute_backward(Dtype dtype, void* dx, const void* dout, const int64_t* positions, int64_t tokens,
                          int64_t top_k, int64_t dim, cudaStream_t stream);
// out[t] = sum over j of weights[t, j] * y[positions[t * top_k + j]]; weights fp32 (null: all 1,
// which is permute's backward).
void moe_unpermute(Dtype dtype, void* out, const void* y, const float* weights, const int64_t* positions,
                   int64_t tokens, int64_t top_k, int64_t dim, cudaStream_t stream);
// dy[positions[t * top_k + j]] = weights[t, j] * dout[t]; dweights[t, j] = dout[t] . y[positions[...]].
void moe_unpermute_backward(Dtype dtype, void* dy, float* dweights, const void* dout, const void* y,
                            const float* weights, const int64_t* positions, int64_t tokens, int64_t top_k, int64_t dim,
                            cudaStream_t stream);

void moe_permute_ref(float* out, const float* x, const int64_t* positions, int64_t tokens, int64_t top_k, int64_t dim);
void moe_permute_backward_ref(float* dx, const float* dout, const int64_t* positions, int64_t tokens, int64_t top_k,
                              int64_t dim);
void moe_unpermute_ref(float* out, const float* y, const float* weights, const int64_t* positions, int64_t tokens,
                       int64_t top_k, int64_t dim);
void moe_unpermute_backward_ref(float* dy, float* dweights, const float* dout, const float* y, const float* weights,
                                const int64_t* positions, int64_t tokens, int64_t top_k, int64_t dim);

}  // namespace troupe::kernels
