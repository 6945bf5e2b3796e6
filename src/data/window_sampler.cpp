#include "data/window_sampler.h"

#include <numeric>
#include <stdexcept>
#include <string>

namespace troupe::data {

namespace {
uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}
}  // namespace

WindowSampler::WindowSampler(int64_t num_tokens, int64_t seq_len, uint64_t seed) : seq_len_(seq_len), seed_(seed) {
  const int64_t windows = seq_len > 0 ? (num_tokens - 1) / seq_len : 0;
  if (windows < 1)
    throw std::invalid_argument("dataset has " + std::to_string(num_tokens) + " tokens, fewer than one window of seq_len+1 = " +
                                std::to_string(seq_len + 1));
  order_.resize(windows);
  shuffle_for_epoch();
}

void WindowSampler::shuffle_for_epoch() {
  std::iota(order_.begin(), order_.end(), 0);
  uint64_t state = seed_ ^ (0x5851f42d4c957f2dULL * static_cast<uint64_t>(pos_.epoch + 1));
  for (size_t i = order_.size(); i > 1; --i) {
    // The modulo bias is below 2^-40 for any realistic number of windows.
    size_t j = static_cast<size_t>(splitmix64(state) % i);
    std::swap(order_[i - 1], order_[j]);
  }
}

int64_t WindowSampler::next() {
  if (pos_.index == num_windows()) {
    pos_ = {pos_.epoch + 1, 0};
    shuffle_for_epoch();
  }
  return order_[pos_.index++] * seq_len_;
}

void WindowSampler::seek(SamplerPosition pos) {
  if (pos.index < 0 || pos.index > num_windows() || pos.epoch < 0)
    throw std::invalid_argument("sampler position out of range");
  pos_ = pos;
  shuffle_for_epoch();
}

}  // namespace troupe::data
