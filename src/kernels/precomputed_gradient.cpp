#include "kernels/precomputed_gradient.h"

#include <ATen/ATen.h>

#ifdef TROUPE_WITH_CUDA
#include "kernels/cross_entropy.h"
#include "kernels/kernel_tensors.h"
#endif

namespace troupe::kernels {

void product_into(at::Tensor dest, const at::Tensor& a, const at::Tensor& b, bool add) {
  const auto dtype = dest.scalar_type();
  if (dtype == a.scalar_type()) {
    if (add) at::addmm_out(dest, dest, a, b);
    else at::mm_out(dest, a, b);
  } else if (a.is_cuda() && dtype == at::kFloat) {
    if (add) at::addmm_out(dest, dest, a, b, dtype);
    else at::mm_out(dest, a, b, dtype);
  } else if (add) {
    dest.add_(at::mm(a, b));
  } else {
    dest.copy_(at::mm(a, b));
  }
}

at::Tensor scale_precomputed(const at::Tensor& grad, const at::Tensor& scale) {
#ifdef TROUPE_WITH_CUDA
  if (use_kernels(grad)) {
    const auto s = scale.to(at::kFloat).contiguous();
    scale_unless_one(kernel_dtype(grad), grad.data_ptr(), grad.numel(), s.data_ptr<float>(), stream());
    return grad;
  }
#endif
  return grad * scale.to(grad.scalar_type());
}

}  // namespace troupe::kernels
