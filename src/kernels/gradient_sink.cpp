#include "kernels/gradient_sink.h"

#include "kernels/precomputed_gradient.h"

#include <ATen/ATen.h>

#include <stdexcept>

namespace troupe::kernels {

struct GradientSinks::Sink {
  at::Tensor dest;  // undefined while closed
  bool written = false;
};

namespace {

// The first write since the sink opened overwrites; later ones (a weight used twice) add.
template <class Sink>
void write(Sink& sink, const at::Tensor& grad) {
  if (sink.written) sink.dest.add_(grad);
  else sink.dest.copy_(grad);
  sink.written = true;
}

}  // namespace

std::shared_ptr<GradientSinks::Sink> GradientSinks::find(const void* key) const {
  std::lock_guard lock(mutex_);
  const auto it = sinks_.find(key);
  return it == sinks_.end() ? nullptr : it->second;
}

std::shared_ptr<GradientSinks::Sink> GradientSinks::open_sink(const void* key) const {
  auto sink = find(key);
  return sink && sink->dest.defined() ? sink : nullptr;
}

void GradientSinks::add(const at::Tensor& weight) {
  std::lock_guard lock(mutex_);
  sinks_[weight.unsafeGetTensorImpl()] = std::make_shared<Sink>();
}

void GradientSinks::remove(const at::Tensor& weight) {
  std::lock_guard lock(mutex_);
  sinks_.erase(weight.unsafeGetTensorImpl());
}

bool GradientSinks::has(const at::Tensor& weight) const { return find(weight.unsafeGetTensorImpl()) != nullptr; }

// A sink is opened and closed by the thread that runs its unit, between backwards: the autograd
// threads only write through an open one.
void GradientSinks::open(const at::Tensor& weight, const at::Tensor& dest) {
  if (dest.sizes() != weight.sizes()) throw std::invalid_argument("gradient sink: not the weight's shape");
  const auto sink = find(weight.unsafeGetTensorImpl());
  if (!sink) throw std::logic_error("gradient sink: the weight is not registered");
  sink->dest = dest;
  sink->written = false;
}

bool GradientSinks::close(const at::Tensor& weight) {
  const auto sink = find(weight.unsafeGetTensorImpl());
  if (!sink) throw std::logic_error("gradient sink: the weight is not registered");
  const bool written = sink->written;
  sink->dest = at::Tensor();
  sink->written = false;
  return written;
}

bool GradientSinks::gradient(const void* weight_key, const at::Tensor& grad) {
  const auto sink = open_sink(weight_key);
  if (!sink) return false;
  write(*sink, grad);
  return true;
}

bool GradientSinks::write_into(const void* weight_key,
                               const std::function<void(const at::Tensor& dest, bool add)>& write) {
  const auto sink = open_sink(weight_key);
  if (!sink) return false;
  write(sink->dest, sink->written);
  sink->written = true;
  return true;
}

bool GradientSinks::product(const void* weight_key, const at::Tensor& a, const at::Tensor& b) {
  return write_into(weight_key, [&](const at::Tensor& dest, bool add) { product_into(dest, a, b, add); });
}

}  // namespace troupe::kernels
