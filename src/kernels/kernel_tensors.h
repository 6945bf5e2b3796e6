// Between the autograd bindings (ops.cpp, moe_ops.cpp) and the launchers: which tensors the
// kernels take, their storage type, and the stream they run on.
#pragma once
#ifdef TROUPE_WITH_CUDA
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>

#include <stdexcept>
#include <string>

#include "kernels/element_types.h"

namespace troupe::kernels {

inline Dtype kernel_dtype(const at::Tensor& t) {
  if (t.scalar_type() == at::kFloat) return Dtype::f32;
  if (t.scalar_type() == at::kBFloat16) return Dtype::bf16;
  throw std::invalid_argument(std::string("CUDA kernels take float32 or bfloat16, got ") +
                              std::string(c10::toString(t.scalar_type())));
}

inline bool use_kernels(const at::Tensor& x) {
  return x.is_cuda() && (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16);
}

inline cudaStream_t stream() { return at::cuda::getCurrentCUDAStream().stream(); }

}  // namespace troupe::kernels
#endif
