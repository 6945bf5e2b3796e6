// Loss parallel (torchtitan's, without DTensor): the mean cross-entropy of hidden · weightᵀ when
// `weight` holds only rows [vocab_start, vocab_start + rows) of the output projection and the
// other ranks of a tensor-parallel group hold the rest. Chunk by chunk of rows, each rank forms
// its logits, and the row maxima, the sums of exponentials and the targets' logits are reduced
// over the group (`all_reduce(t, max)`), so the whole logits exist nowhere; the gradients are
// computed with the loss, as linear_cross_entropy's are. Every rank returns the same loss. The
// gradient of `hidden` is this rank's share (its vocabulary's part): the caller's sequence
// gather sums the shares in its backward.
#pragma once
#include <ATen/core/Tensor.h>

#include <functional>

#include "kernels/weight_services.h"

namespace troupe::kernels {

using GroupAllReduce = std::function<void(at::Tensor& t, bool max)>;

at::Tensor vocab_parallel_cross_entropy(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& targets,
                                        int64_t vocab_start, const GroupAllReduce& all_reduce,
                                        const WeightServices* services = nullptr, int64_t chunk_rows = 4096);

}  // namespace troupe::kernels
