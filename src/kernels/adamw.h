// Adam / AdamW over many fp32 tensors in one pass each: every element of a parameter, its
// gradient and its two moments is read once and written once, by 16-byte accesses wherever the
// four tensors are 16-byte aligned. The arithmetic is ATen's fused AdamW's (decay, moments, bias
// corrections, a gradient divisor read on the device) to within an ulp.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/element_types.h"

namespace troupe::kernels {

struct AdamTensor {
  float* param;
  const float* grad;
  float* exp_avg;
  float* exp_avg_sq;
  int64_t numel;
  void* bf16_copy = nullptr;  // when set, receives the updated parameter rounded to bf16
};

struct AdamHyper {
  double lr, beta1, beta2, eps, weight_decay;
  bool decoupled;  // AdamW: decay the weights directly; Adam: add the decay to the gradient
};

// One update at `step` (1 for the first) of `count` tensors. `grad_divisor`: null, or one fp32
// on the device that every gradient is divided by (gradient clipping).
void adamw_update(const AdamTensor* tensors, size_t count, const AdamHyper& hyper, int64_t step,
                  const float* grad_divisor, cudaStream_t stream);

// CPU reference in fp64 arithmetic (fp32 storage), the yardstick of the tests.
void adamw_update_ref(const AdamTensor& tensor, const AdamHyper& hyper, int64_t step, float grad_divisor);

}  // namespace troupe::kernels
