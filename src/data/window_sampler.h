// Deterministic order over the training windows of a token stream: every window of
// seq_len+1 tokens (stride seq_len) once per epoch, in an order shuffled by (seed, epoch).
// Pure integer arithmetic (own Fisher-Yates over splitmix64), so the order is the same on
// every platform and standard library.
#pragma once
#include <cstdint>
#include <vector>

namespace troupe::data {

struct SamplerPosition {
  int64_t epoch = 0;
  int64_t index = 0;  // next window within the epoch
};

class WindowSampler {
 public:
  WindowSampler(int64_t num_tokens, int64_t seq_len, uint64_t seed);
  int64_t num_windows() const { return static_cast<int64_t>(order_.size()); }
  // Offset of the next window's first token; advances the position.
  int64_t next();
  SamplerPosition position() const { return pos_; }
  void seek(SamplerPosition pos);

 private:
  void shuffle_for_epoch();
  int64_t seq_len_;
  uint64_t seed_;
  std::vector<int64_t> order_;
  SamplerPosition pos_;
};

}  // namespace troupe::data
