// One micro-batch of training data. Travels between actors by shared_ptr (never copied).
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>

#include "data/data_position.h"

namespace troupe::data {

struct Batch {
  at::Tensor tokens;   // [batch, seq] int64
  at::Tensor targets;  // [batch, seq] int64: tokens shifted by one
  int64_t sequence = 0;  // 0-based index of this batch in the loader's output
  // The loader's position after this batch: a checkpoint taken once it is consumed records it,
  // because the loader itself has already prefetched further.
  DataPosition next;
};

}  // namespace troupe::data
