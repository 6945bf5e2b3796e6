// Rotary embedding in Meta's interleaved layout: each pair (x[2i], x[2i+1]) of every head at
// position s is rotated by the angle whose cos/sin are cos[s, i], sin[s, i].
// x, out: [batch, seq, heads, head_dim] contiguous in `dtype`; cos, sin: [seq, head_dim/2] fp32.
// The backward is the rotation by the opposite angle: rotary_backward(dx, dout) = R(-θ)·dout.
#pragma once

#include <cstdint>

#include "kernels/element_types.h"

namespace troupe::kernels {

void rotary_forward(Dtype dtype, void* out, const void* x, const float* cos, const float* sin, int64_t batch,
                    int64_t seq, int64_t heads, int64_t head_dim, cudaStream_t stream);
void rotary_backward(Dtype dtype, void* dx, const void* dout, const float* cos, const float* sin, int64_t batch,
                     int64_t seq, int64_t heads, int64_t head_dim, cudaStream_t stream);

void rotary_ref(float* out, const float* x, const float* cos, const float* sin, int64_t batch, int64_t seq,
                int64_t heads, int64_t head_dim, bool inverse);

}  // namespace troupe::kernels
