// Where a weight's gradient goes instead of autograd's: FSDP points each weight of the unit whose
// backward runs at its place in the unit's gradient buffer (the reduce dtype, fp32 by default, in
// the parameter's layout), and Troupe's autograd functions write their weight gradients there in
// fp32 (the projections as their GEMMs' output; the loss projection and the RMSNorm kernels as
// they computed them). Otherwise a gathered bf16 weight gets a bf16 gradient, rounded, then cast
// and copied into that buffer: one more pass over most of the model's gradients each step.
#pragma once
#include <ATen/core/Tensor.h>

#include <functional>
#include <memory>
#include <mutex>
#include <unordered_map>

#include "kernels/weight_services.h"

namespace troupe::kernels {

// One owner's sinks (FSDP's, for its weights), handed to the ops through WeightServices.
// Weights are matched by identity (their TensorImpl), so a weight must stay the same tensor while
// it is registered. Thread-safe: autograd runs backwards on threads of its own.
class GradientSinks {
 public:
  // Registers `weight` as one whose gradient may go to a sink; the projections then take the
  // path that writes to sinks on every device.
  void add(const at::Tensor& weight);
  void remove(const at::Tensor& weight);
  bool has(const at::Tensor& weight) const;
  // Points a registered weight's sink at `dest` (the weight's shape), nothing written yet.
  void open(const at::Tensor& weight, const at::Tensor& dest);
  // Detaches the sink from its destination; says whether a gradient was written there.
  bool close(const at::Tensor& weight);

  // With an open sink for the weight whose TensorImpl is `weight_key`: writes a · b into it (the
  // first write since it opened) or adds it (a weight used twice), and says true; else false.
  bool product(const void* weight_key, const at::Tensor& a, const at::Tensor& b);
  // The same for a gradient computed already (the weight's shape).
  bool gradient(const void* weight_key, const at::Tensor& grad);
  // The same for a gradient `write` produces itself into the sink's destination (overwriting it,
  // or adding to it when `add`), such as a GEMM's output.
  bool write_into(const void* weight_key, const std::function<void(const at::Tensor& dest, bool add)>& write);

 private:
  struct Sink;
  std::shared_ptr<Sink> find(const void* key) const;
  std::shared_ptr<Sink> open_sink(const void* key) const;
  mutable std::mutex mutex_;
  std::unordered_map<const void*, std::shared_ptr<Sink>> sinks_;
};

// The services' sinks, when they have them and one is open for the weight.
inline bool sink_product(const WeightServices* s, const void* key, const at::Tensor& a, const at::Tensor& b) {
  return s && s->sinks && s->sinks->product(key, a, b);
}
inline bool sink_write(const WeightServices* s, const void* key,
                       const std::function<void(const at::Tensor& dest, bool add)>& write) {
  return s && s->sinks && s->sinks->write_into(key, write);
}
inline bool sink_gradient(const WeightServices* s, const void* key, const at::Tensor& grad) {
  return s && s->sinks && s->sinks->gradient(key, grad);
}

}  // namespace troupe::kernels
