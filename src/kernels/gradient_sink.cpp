#include "kernels/gradient_sink.h"

#include <ATen/ATen.h>

#include <memory>
#include <mutex>
#include <stdexcept>
#include <unordered_map>

namespace troupe::kernels {

namespace {

struct Sink {
  at::Tensor dest;  // undefined while closed
  bool written = false;
};

std::mutex sinks_mutex;
std::unordered_map<const void*, std::shared_ptr<Sink>>& sinks() {
  static std::unordered_map<const void*, std::shared_ptr<Sink>> registry;
  return registry;
}

std::shared_ptr<Sink> find_sink(const void* key) {
  std::lock_guard lock(sinks_mutex);
  const auto it = sinks().find(key);
  return it == sinks().end() ? nullptr : it->second;
}

std::shared_ptr<Sink> registered(const at::Tensor& weight) {
  auto sink = find_sink(weight.unsafeGetTensorImpl());
  if (!sink) throw std::logic_error("gradient sink: the weight is not registered");
  return sink;
}

std::shared_ptr<Sink> open_sink(const void* key) {
  auto sink = find_sink(key);
  return sink && sink->dest.defined() ? sink : nullptr;
}

// The first write since the sink opened overwrites; later ones (a weight used twice) add.
void write(Sink& sink, const at::Tensor& grad) {
  if (sink.written) sink.dest.add_(grad);
  else sink.dest.copy_(grad);
  sink.written = true;
}

}  // namespace

void register_gradient_sink(const at::Tensor& weight) {
  std::lock_guard lock(sinks_mutex);
  sinks()[weight.unsafeGetTensorImpl()] = std::make_shared<Sink>();
}

void unregister_gradient_sink(const at::Tensor& weight) {
  std::lock_guard lock(sinks_mutex);
  sinks().erase(weight.unsafeGetTensorImpl());
}

bool has_gradient_sink(const at::Tensor& weight) { return find_sink(weight.unsafeGetTensorImpl()) != nullptr; }

// A sink is opened and closed by the thread that runs its unit, between backwards: the autograd
// threads only write through an open one.
void open_gradient_sink(const at::Tensor& weight, const at::Tensor& dest) {
  if (dest.sizes() != weight.sizes()) throw std::invalid_argument("gradient sink: not the weight's shape");
  const auto sink = registered(weight);
  sink->dest = dest;
  sink->written = false;
}

bool close_gradient_sink(const at::Tensor& weight) {
  const auto sink = registered(weight);
  const bool written = sink->written;
  sink->dest = at::Tensor();
  sink->written = false;
  return written;
}

bool sink_gradient(const void* weight_key, const at::Tensor& grad) {
  const auto sink = open_sink(weight_key);
  if (!sink) return false;
  write(*sink, grad);
  return true;
}

bool sink_product(const void* weight_key, const at::Tensor& a, const at::Tensor& b) {
  const auto sink = open_sink(weight_key);
  if (!sink) return false;
  auto& dest = sink->dest;
  const auto dtype = dest.scalar_type();
  if (dtype == a.scalar_type()) {
    if (sink->written) at::addmm_out(dest, dest, a, b);
    else at::mm_out(dest, a, b);
  } else if (a.is_cuda() && dtype == at::kFloat) {  // cuBLAS accumulates in fp32 and writes it so
    if (sink->written) at::addmm_out(dest, dest, a, b, dtype);
    else at::mm_out(dest, a, b, dtype);
  } else {
    write(*sink, at::mm(a, b));
    return true;
  }
  sink->written = true;
  return true;
}

}  // namespace troupe::kernels
