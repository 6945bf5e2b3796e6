// SwiGLU gate: out = silu(gate) * up, elementwise over n elements in `dtype`.
#pragma once

#include <cstdint>

#include "kernels/element_types.h"

namespace troupe::kernels {

void swiglu_forward(Dtype dtype, void* out, const void* gate, const void* up, int64_t n, cudaStream_t stream);
void swiglu_backward(Dtype dtype, void* dgate, void* dup, const void* dout, const void* gate, const void* up, int64_t n,
                     cudaStream_t stream);

void swiglu_forward_ref(float* out, const float* gate, const float* up, int64_t n);
void swiglu_backward_ref(float* dgate, float* dup, const float* dout, const float* gate, const float* up, int64_t n);

}  // namespace troupe::kernels
