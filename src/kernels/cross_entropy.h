// Cross-entropy of one chunk of rows of logits, fused with its gradient so that the full
// [tokens, vocab] logits never exist at once (the caller feeds chunks of rows).
// logits: [rows, vocab] in `dtype`, overwritten in place by grad_scale · (softmax − onehot)
// when grad_scale != 0; targets: [rows] int64 (a negative target ignores the row: loss 0,
// gradient 0); losses: [rows] fp32, −log softmax[target]. `device_scale`, when not null, points
// to one fp32 on the device that multiplies grad_scale (a scale known only on the device, such
// as 1 / the number of counted targets, without a host sync).
#pragma once

#include <cstdint>

#include "kernels/element_types.h"

namespace troupe::kernels {

void cross_entropy_forward_backward(Dtype dtype, void* logits, float* losses, const int64_t* targets, int64_t rows,
                                    int64_t vocab, float grad_scale, cudaStream_t stream,
                                    const float* device_scale = nullptr);

// x[0, n) *= *scale in place, `scale` one fp32 on the device. The backward of a fused loss gets
// the loss's incoming gradient there; it is exactly 1 for a plain loss.backward(), and then the
// kernel returns without touching x (no pass over a vocabulary-sized gradient).
void scale_unless_one(Dtype dtype, void* x, int64_t n, const float* scale, cudaStream_t stream);

// Loss parallel (kernels/vocab_parallel_loss.h): logits [rows, local] of one rank's share
// [start, start + local) of the vocabulary. Stats: per row the share's max, the sum of its
// exponentials relative to that max, and the target's logit where the share holds it (else 0).
// Gradient: the logits overwritten by *inv_count · (exp(x − row_max) / sum_exp − onehot), with
// the whole vocabulary's row_max and sum_exp (reduced over the group); 0 on ignored rows.
void vocab_share_stats(Dtype dtype, const void* logits, const int64_t* targets, int64_t rows, int64_t local,
                       int64_t start, float* row_max, float* sum_exp, float* target_logit, cudaStream_t stream);
void vocab_share_gradient(Dtype dtype, void* logits, const int64_t* targets, int64_t rows, int64_t local,
                          int64_t start, const float* row_max, const float* sum_exp, const float* inv_count,
                          cudaStream_t stream);

void cross_entropy_ref(float* logits, float* losses, const int64_t* targets, int64_t rows, int64_t vocab,
                       float grad_scale);

}  // namespace troupe::kernels
