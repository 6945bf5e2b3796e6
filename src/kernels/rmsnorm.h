// RMSNorm over the last dimension: out = x / sqrt(mean(x²) + eps) * weight.
// x, out, dx: [rows, dim] in `dtype`; weight: [dim] in `dtype`; rstd: [rows] fp32 (saved by the
// forward for the backward); dweight: [dim] fp32, written. The backward sums the weight's
// gradient in a fixed order (the same bits on every run) through `workspace`: the fp32 scratch
// of rmsnorm_backward_workspace(rows, dim) elements.
// Fused residual (pre-norm blocks), both optional: the forward with `residual` and `sum_out`
// normalises h = x + residual and writes h (rounded to dtype) to sum_out; the backward with
// `dresidual` adds that gradient (x's gradient from the residual path) to dx.
#pragma once

#include <cstdint>

#include "kernels/element_types.h"

namespace troupe::kernels {

void rmsnorm_forward(Dtype dtype, void* out, float* rstd, const void* x, const void* weight, int64_t rows, int64_t dim,
                     float eps, cudaStream_t stream, const void* residual = nullptr, void* sum_out = nullptr);
void rmsnorm_backward(Dtype dtype, void* dx, float* dweight, const void* dout, const void* x, const void* weight,
                      const float* rstd, int64_t rows, int64_t dim, float* workspace, cudaStream_t stream,
                      const void* dresidual = nullptr);
int64_t rmsnorm_backward_workspace(int64_t rows, int64_t dim);

// CPU references (fp32 storage), the yardstick of the tests.
void rmsnorm_forward_ref(float* out, float* rstd, const float* x, const float* weight, int64_t rows, int64_t dim,
                         float eps);
void rmsnorm_backward_ref(float* dx, float* dweight, const float* dout, const float* x, const float* weight,
                          const float* rstd, int64_t rows, int64_t dim);

}  // namespace troupe::kernels
