// One micro-batch of training data. Travels between actors by shared_ptr (never copied).
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>

#include "data/data_position.h"

namespace troupe::data {

struct Batch {
  at::Tensor tokens;   // [batch, seq] int64
  at::Tensor targets;  // [batch, seq] int64: tokens shifted by one
  // [batch, seq] int64: each token's document within its row, counted from 0; a document ends
  // after the tokenizer's EOS token. Undefined when the tokenizer has none.
  at::Tensor documents;
  int64_t sequence = 0;  // 0-based index of this batch in the loader's output
  // The loader's position after this batch: a checkpoint taken once it is consumed records it,
  // because the loader itself has already prefetched further.
  DataPosition next;
};

// Each token's document within its row of `tokens` [batch, seq]: 0 up to and including the
// first `eos`, then 1, and so on.
at::Tensor document_ids(const at::Tensor& tokens, int64_t eos);

}  // namespace troupe::data
