#include "parallel/tensor_parallel.h"

#include <ATen/ATen.h>

namespace troupe::parallel {

namespace {

class CommunicatorGroup : public models::TensorParallelGroup {
 public:
  explicit CommunicatorGroup(comm::CommunicatorPtr c) : c_(std::move(c)) {}
  int rank() const override { return c_->rank(); }
  int size() const override { return c_->size(); }
  at::Tensor all_gather(const at::Tensor& in) override {
    auto src = in.contiguous();
    auto shape = src.sizes().vec();
    shape.insert(shape.begin(), size());
    auto out = at::empty(shape, src.options());
    c_->all_gather(out.view({-1}), src.view({-1}))->wait();  // the engines take flat buffers
    return out;
  }
  at::Tensor reduce_scatter(const at::Tensor& in) override {
    auto src = in.contiguous();
    auto out = at::empty(src.sizes().slice(1), src.options());
    c_->reduce_scatter(out.view({-1}), src.view({-1}), comm::ReduceOp::sum)->wait();
    return out;
  }
  void all_reduce(at::Tensor& t, bool max) override {
    if (!t.is_contiguous()) throw std::invalid_argument("tensor-parallel all-reduce: a contiguous tensor is needed");
    c_->all_reduce(t, max ? comm::ReduceOp::max : comm::ReduceOp::sum)->wait();
  }

 private:
  comm::CommunicatorPtr c_;
};

}  // namespace

models::TensorParallelGroupPtr make_tensor_parallel_group(comm::CommunicatorPtr tp) {
  return std::make_shared<CommunicatorGroup>(std::move(tp));
}

void keep_piece(at::Tensor& parameter, const Placement& placement) {
  if (placement.splits.empty()) return;
  at::NoGradGuard no_grad;
  const auto box = placement.box();
  auto piece = parameter.detach();
  for (size_t d = 0; d < box.offsets.size(); ++d) piece = piece.narrow(static_cast<int64_t>(d), box.offsets[d], box.lengths[d]);
  parameter.set_data(piece.contiguous().clone());
}

void sum_partial_gradients(const std::vector<at::Tensor>& tensors, comm::Communicator& tp) {
  std::vector<at::Tensor> grads;
  for (const auto& t : tensors)
    if (t.grad().defined()) grads.push_back(t.grad());
  if (grads.empty()) return;
  std::vector<at::Tensor> flat;
  for (const auto& g : grads) flat.push_back(g.reshape({-1}));
  auto buffer = at::cat(flat);
  tp.all_reduce(buffer, comm::ReduceOp::sum)->wait();
  int64_t offset = 0;
  for (auto& g : grads) {
    g.copy_(buffer.narrow(0, offset, g.numel()).view(g.sizes()));
    offset += g.numel();
  }
}

}  // namespace troupe::parallel
