#include "checkpoint/host_snapshot.h"

#include <torch/torch.h>

#include <set>

namespace troupe::checkpoint {

at::Tensor SnapshotBuffers::buffer_for(const std::string& name, const at::Tensor& src, at::ScalarType dtype) {
  const bool reusable = reuse_ && in_flight_.expired();
  if (reusable) {
    auto it = buffers_.find(name);
    if (it != buffers_.end() && it->second.sizes() == src.sizes() && it->second.scalar_type() == dtype)
      return it->second;
  }
  auto buffer = torch::empty(src.sizes(), torch::TensorOptions().dtype(dtype).pinned_memory(reuse_ && pin_ && src.is_cuda()));
  if (reusable) buffers_[name] = buffer;
  return buffer;
}

std::vector<SnapshotTensor> SnapshotBuffers::copy_to_host(const std::vector<LiveTensor>& live,
                                                          std::optional<at::ScalarType> dtype) {
  torch::NoGradGuard no_grad;
  std::vector<SnapshotTensor> out;
  std::set<c10::DeviceIndex> gpus;
  for (const auto& t : live) {
    auto host = buffer_for(t.name, t.tensor, dtype.value_or(t.tensor.scalar_type()));
    // Pinned destinations copy asynchronously on the GPU's stream; one synchronize below.
    host.copy_(t.tensor.detach(), /*non_blocking=*/host.is_pinned());
    if (t.tensor.is_cuda()) gpus.insert(t.tensor.device().index());
    out.push_back({t.name, std::move(host), t.global_shape, t.box});
  }
  for (auto gpu : gpus) torch::cuda::synchronize(gpu);
  return out;
}

}  // namespace troupe::checkpoint
