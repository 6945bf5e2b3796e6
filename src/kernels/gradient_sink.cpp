#include "kernels/gradient_sink.h"

#include <ATen/ATen.h>

#include <mutex>
#include <unordered_map>

namespace troupe::kernels {

namespace {

std::mutex registry_mutex;
std::unordered_map<const void*, std::shared_ptr<GradientSink>>& registry() {
  static std::unordered_map<const void*, std::shared_ptr<GradientSink>> sinks;
  return sinks;
}

}  // namespace

void set_gradient_sink(const at::Tensor& weight, std::shared_ptr<GradientSink> sink) {
  std::lock_guard lock(registry_mutex);
  registry()[weight.unsafeGetTensorImpl()] = std::move(sink);
}

void remove_gradient_sink(const at::Tensor& weight) {
  std::lock_guard lock(registry_mutex);
  registry().erase(weight.unsafeGetTensorImpl());
}

std::shared_ptr<GradientSink> gradient_sink(const void* key) {
  std::lock_guard lock(registry_mutex);
  const auto it = registry().find(key);
  return it == registry().end() ? nullptr : it->second;
}

void write_product(GradientSink& sink, const at::Tensor& a, const at::Tensor& b) {
  for (auto& r : sink.pieces) {
    const auto rows = a.narrow(0, r.first, r.count);
    const auto dtype = r.dest.scalar_type();
    if (dtype == a.scalar_type()) {
      if (sink.written) at::addmm_out(r.dest, r.dest, rows, b);
      else at::mm_out(r.dest, rows, b);
    } else if (dtype == at::kFloat && a.is_cuda()) {  // cuBLAS accumulates in fp32 and writes it
      if (sink.written) at::addmm_out(r.dest, r.dest, rows, b, dtype);
      else at::mm_out(r.dest, rows, b, dtype);
    } else {
      const auto product = at::mm(rows, b);
      if (sink.written) r.dest.add_(product);
      else r.dest.copy_(product);
    }
  }
  sink.written = true;
}

void write_scaled(GradientSink& sink, const at::Tensor& grad, const at::Tensor& scale) {
  for (auto& r : sink.pieces) {
    const auto rows = grad.narrow(0, r.first, r.count);
    if (sink.written) r.dest.addcmul_(rows, scale.to(r.dest.scalar_type()));
    else at::mul_out(r.dest, rows, scale.to(r.dest.scalar_type()));
  }
  sink.written = true;
}

}  // namespace troupe::kernels
