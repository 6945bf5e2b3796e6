// One micro-batch of training data. Travels between actors by shared_ptr (never copied).
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>

namespace troupe::data {

struct Batch {
  at::Tensor tokens;   // [batch, seq] int64
  at::Tensor targets;  // [batch, seq] int64: tokens shifted by one
  int64_t sequence = 0;  // 0-based index of this batch in the loader's output
};

}  // namespace troupe::data
