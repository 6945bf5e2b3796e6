// What a model's units need of a group of ranks they exchange activations with inside their
// forwards (DESIGN §4): the tensor-parallel group (Model::apply_tensor_parallel) and the
// context-parallel one (Model::apply_context_parallel). parallel/ implements it over a
// Communicator of the mesh dimension; models/ sees only this interface.
// Tensor parallelism's sequence parallelism is always on with TP, as in torchtitan: between the regions that need the
// whole sequence (attention and the feed-forward's projections, the loss), a rank holds its
// 1/n of the sequence of the residual stream.
#pragma once
#include <ATen/core/Tensor.h>

#include <functional>
#include <memory>
#include <vector>

namespace troupe::kernels {
struct InputRecipe;
struct WeightServices;
}

namespace troupe::models {

class RankGroup {
 public:
  virtual ~RankGroup() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // [size, in...]: every rank's `in`, in rank order.
  virtual at::Tensor all_gather(const at::Tensor& in) = 0;
  // `in` is [size, rest...]: the sum over the ranks of its slice [rank], shape [rest...].
  virtual at::Tensor reduce_scatter(const at::Tensor& in) = 0;
  // In place over every rank: the sum, or the maximum.
  virtual void all_reduce(at::Tensor& t, bool max) = 0;
  // Sequence parallelism's layouts: x [B, s, ...] of every rank -> [B, size * s, ...], rank r's
  // part at positions r*s .. r*s+s-1; and x [B, size * s, ...] -> [B, s, ...], the sum over the
  // ranks of their part `rank`. By default through all_gather and reduce_scatter and a
  // rank-major copy; a group over a communicator moves each row in place instead.
  virtual at::Tensor all_gather_sequence(const at::Tensor& x);
  virtual at::Tensor reduce_scatter_sequence(const at::Tensor& x);

  // A transfer between ranks, running while the caller computes.
  class Transfer {
   public:
    virtual ~Transfer() = default;
    // What this rank received.
    virtual at::Tensor wait() = 0;
  };
  // Sends `t` to the next rank (rank + 1 mod size) and receives the previous rank's (shaped as
  // what this rank sent).
  virtual std::unique_ptr<Transfer> ring_shift(const at::Tensor& t) = 0;
  // Rows of `in` [rows, ...], in rank order, send_rows[r] of them to rank r; receives the rows
  // recv_rows[r] from rank r, in rank order (expert parallelism's dispatch and combine).
  virtual std::unique_ptr<Transfer> start_all_to_all(const at::Tensor& in, const std::vector<int64_t>& send_rows,
                                                     const std::vector<int64_t>& recv_rows) = 0;
  at::Tensor all_to_all(const at::Tensor& in, const std::vector<int64_t>& send_rows,
                        const std::vector<int64_t>& recv_rows) {
    return start_all_to_all(in, send_rows, recv_rows)->wait();
  }
};
using RankGroupPtr = std::shared_ptr<RankGroup>;

// Sequence parallelism's two region boundaries, differentiable:
// x [B, S/n, ...] -> [B, S, ...], every rank's part in rank order; its gradient is the
// reduce-scatter of the incoming one (each rank's use of the whole sequence adds up).
at::Tensor gather_sequence(const at::Tensor& x, RankGroup& group);
// x [B, S, ...], one rank's partial sum (a row-parallel projection's output) -> [B, S/n, ...] of
// the sum over the ranks; its gradient is the all-gather of the incoming one.
at::Tensor scatter_sequence_sum(const at::Tensor& x, RankGroup& group);
// Asynchronous tensor parallelism (collective matmul, on any communicator): the same products
// as the two boundaries above around projections, with the transfers cut into the ranks' parts
// of the sequence and passed around the ring while the part at hand is multiplied. Equal to the
// plain forms up to the order of the sums.
// gather_sequence(x) · wᵢᵀ for each weight, keeping only this rank's part of the input (as
// Megatron's sequence parallelism): the backward gathers it again for the weights' gradients.
// `ring`: each part is projected as it arrives; the backward makes one more pass around the
// ring, the input's parts coming round again for the weights' gradients while the input
// gradient's partial sums travel to their owners. Else one gather and one reduce-scatter, as
// gather_sequence's.
// `recipe` (the op policy): the input's part is recomputed for the backward rather than kept.
std::vector<at::Tensor> gathered_linear(const at::Tensor& x, at::TensorList weights, RankGroup& group,
                                        const kernels::WeightServices* services, bool ring,
                                        const kernels::InputRecipe& recipe);
// scatter_sequence_sum(z · wᵀ): each part's partial sums are computed and added to the ones
// travelling the ring; the backward gathers the output's gradient part by part around the ring.
at::Tensor linear_scattered(const at::Tensor& z, const at::Tensor& weight, RankGroup& group,
                            const kernels::WeightServices* services, const kernels::InputRecipe& recipe);

// A block's projections on either side of a sequence-parallel region, with or without tensor
// parallelism (`tp` null: x's own rows), recomputing their input from `recipe` when it is given
// (FP8 projections of the gathered sequence excepted: they keep its FP8 transpose); under tp,
// `asynchronous`, the transfers run as the collective matmuls above.
// Each weight's projection of the whole sequence (gather_sequence(x) under tp).
std::vector<at::Tensor> project_whole_sequence(const at::Tensor& x, at::TensorList weights, RankGroup* tp,
                                               bool asynchronous, const kernels::InputRecipe& recipe,
                                               const kernels::WeightServices* services);
// z · wᵀ, under tp summed over the ranks into this rank's part of the sequence.
at::Tensor project_to_parts(const at::Tensor& z, const at::Tensor& weight, RankGroup* tp, bool asynchronous,
                            const kernels::InputRecipe& recipe, const kernels::WeightServices* services);

// RankGroup::all_to_all, differentiable: the gradient goes back the same way, counts swapped.
// `between` (may be empty) runs while the rows travel: what the caller can compute meanwhile
// (the shared experts), recorded by autograd as usual; its backward runs while the gradient
// travels back.
at::Tensor exchange_rows(const at::Tensor& x, const std::vector<int64_t>& send_rows,
                         const std::vector<int64_t>& recv_rows, RankGroup& group,
                         const std::function<void()>& between = {});

}  // namespace troupe::models
