// Loss parallel (torchtitan's, without DTensor): the mean cross-entropy of hidden · weightᵀ when
// `weight` holds only rows [vocab_start, vocab_start + rows) of the output projection and the
// other ranks of a tensor-parallel group hold the rest. Chunk by chunk of rows, each rank forms
// its logits, and the row maxima, the sums of exponentials and the targets' logits are reduced
// over the group (`all_reduce(t, max)`), so the whole logits exist nowhere; the gradients are
// computed with the loss, as linear_cross_entropy's are. Every rank returns the same loss. The
// gradient of `hidden` is this rank's share (its vocabulary's part): the caller's sequence
// gather sums the shares in its backward.
// With `all_gather` set (torchtitan's `disable_loss_parallel`), each chunk's logits are gathered
// whole on every rank instead and the loss is taken over them as without tensor parallelism: the
// same numbers, for a chunk's whole logits on every rank and a gather of them per chunk.
#pragma once
#include <ATen/core/Tensor.h>

#include <functional>

#include "kernels/weight_services.h"

namespace troupe::kernels {

// In place over the group's ranks: the sum, or the maximum.
using GroupAllReduce = std::function<void(at::Tensor& t, bool max)>;
// [ranks, t...]: every rank's `t`, in rank order.
using GroupAllGather = std::function<at::Tensor(const at::Tensor& t)>;

// The ranks' shares of the vocabulary are consecutive, in rank order, and equal when gathered.
at::Tensor vocab_parallel_cross_entropy(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& targets,
                                        int64_t vocab_start, const GroupAllReduce& all_reduce,
                                        const GroupAllGather& all_gather, const WeightServices* services = nullptr,
                                        int64_t chunk_rows = 4096);

}  // namespace troupe::kernels
