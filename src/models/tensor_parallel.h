// What a model's units need of their tensor-parallel group (DESIGN §4: TP and SP live inside the
// units' forwards, over the communicator of the tp mesh dimension). parallel/ implements it over a
// Communicator and hands it to Model::apply_tensor_parallel; models/ sees only this interface.
// Sequence parallelism is always on with TP, as in torchtitan: between the regions that need the
// whole sequence (attention and the feed-forward's projections, the loss), a rank holds its
// 1/n of the sequence of the residual stream.
#pragma once
#include <ATen/core/Tensor.h>

#include <memory>

namespace troupe::models {

class TensorParallelGroup {
 public:
  virtual ~TensorParallelGroup() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // [size, in...]: every rank's `in`, in rank order.
  virtual at::Tensor all_gather(const at::Tensor& in) = 0;
  // `in` is [size, rest...]: the sum over the ranks of its slice [rank], shape [rest...].
  virtual at::Tensor reduce_scatter(const at::Tensor& in) = 0;
  // In place over every rank: the sum, or the maximum.
  virtual void all_reduce(at::Tensor& t, bool max) = 0;
};
using TensorParallelGroupPtr = std::shared_ptr<TensorParallelGroup>;

// Sequence parallelism's two region boundaries, differentiable:
// x [B, S/n, ...] -> [B, S, ...], every rank's part in rank order; its gradient is the
// reduce-scatter of the incoming one (each rank's use of the whole sequence adds up).
at::Tensor gather_sequence(const at::Tensor& x, TensorParallelGroup& group);
// x [B, S, ...], one rank's partial sum (a row-parallel projection's output) -> [B, S/n, ...] of
// the sum over the ranks; its gradient is the all-gather of the incoming one.
at::Tensor scatter_sequence_sum(const at::Tensor& x, TensorParallelGroup& group);

}  // namespace troupe::models
