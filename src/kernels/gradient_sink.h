// Where a weight's gradient goes instead of autograd's .grad: FSDP registers its reduce-scatter
// input for each weight of the unit whose backward is running, and the projections write their
// weight gradients straight into it, in the buffer's dtype (fp32 by default) and rank-major
// layout. Otherwise a gathered bf16 weight would get a bf16 gradient, rounded and then cast and
// copied into the buffer: one more pass over every gradient and a loss of precision.
#pragma once
#include <ATen/core/Tensor.h>

#include <memory>
#include <vector>

namespace troupe::kernels {

struct GradientSink {
  struct Rows {
    int64_t first = 0, count = 0;  // the weight's rows [first, first + count) ...
    at::Tensor dest;                // ... go here: [count, row_numel], contiguous
  };
  std::vector<Rows> pieces;
  // Set by the first write, which overwrites; later writes in the same backward (a weight used
  // twice) add.
  bool written = false;
};

// `weight` is the parameter a projection receives (matched by identity, so it must stay the
// same tensor while registered). Thread-safe: autograd runs backward on its own threads.
void set_gradient_sink(const at::Tensor& weight, std::shared_ptr<GradientSink> sink);
void remove_gradient_sink(const at::Tensor& weight);
// The sink registered for the parameter whose TensorImpl is `key`, or null.
std::shared_ptr<GradientSink> gradient_sink(const void* key);

// Writes (first write) or adds a · b, the weight's gradient as a product (a's rows are the
// weight's rows), into the sink's pieces: one GEMM per piece, with fp32 output from bf16 inputs.
void write_product(GradientSink& sink, const at::Tensor& a, const at::Tensor& b);
// Writes or adds `grad` (the whole weight's gradient, [rows, row_numel] in any dtype) times `scale`.
void write_scaled(GradientSink& sink, const at::Tensor& grad, const at::Tensor& scale);

}  // namespace troupe::kernels
