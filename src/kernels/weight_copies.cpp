#include "kernels/weight_copies.h"

#include <ATen/ATen.h>

#include <stdexcept>

namespace troupe::kernels {

namespace {
bool keepable(const at::Tensor& weight, at::ScalarType dtype) {
  return weight.scalar_type() == at::kFloat && dtype == at::kBFloat16 && weight.is_contiguous();
}
}  // namespace

at::Tensor WeightCopies::cast(const at::Tensor& weight, at::ScalarType dtype) {
  if (weight.scalar_type() == dtype) return weight.contiguous();
  if (!keepable(weight, dtype)) return weight.to(dtype).contiguous();
  auto& kept = kept_[weight.unsafeGetTensorImpl()];
  if (!kept.copy.defined() || kept.version != weight._version()) {
    kept.copy = weight.to(dtype).contiguous();
    kept.version = weight._version();
  }
  return kept.copy;
}

at::Tensor WeightCopies::current(const at::Tensor& weight) const {
  const auto it = kept_.find(weight.unsafeGetTensorImpl());
  if (it == kept_.end() || it->second.version != weight._version()) return {};
  return it->second.copy;
}

at::Tensor WeightCopies::copy_of(const at::Tensor& weight) const {
  const auto it = kept_.find(weight.unsafeGetTensorImpl());
  return it == kept_.end() ? at::Tensor() : it->second.copy;
}

void WeightCopies::place(const at::Tensor& weight, at::Tensor copy) {
  if (copy.scalar_type() != at::kBFloat16 || copy.sizes() != weight.sizes() || !copy.is_contiguous())
    throw std::invalid_argument("WeightCopies::place: a copy must be a contiguous bf16 tensor of the weight's shape");
  kept_[weight.unsafeGetTensorImpl()] = {std::move(copy), -1};
}

void WeightCopies::mark_current(const at::Tensor& weight) {
  const auto it = kept_.find(weight.unsafeGetTensorImpl());
  if (it != kept_.end()) it->second.version = weight._version();
}

at::Tensor compute_weight(const at::Tensor& weight, at::ScalarType dtype, const WeightServices* services) {
  if (services && services->copies) return services->copies->cast(weight, dtype);
  return weight.to(dtype).contiguous();
}

}  // namespace troupe::kernels
