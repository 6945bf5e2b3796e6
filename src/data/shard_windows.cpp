#include "data/shard_windows.h"

#include <algorithm>
#include <stdexcept>

namespace troupe::data {

ShardWindows::ShardWindows(const std::vector<std::string>& files, int64_t vocab_size, DataShare share, int64_t seq_len)
    : share_(share), window_(seq_len + 1) {
  int64_t total = 0;
  for (const auto& f : files) {
    auto shard = std::make_unique<TokenShard>(f);
    if (shard->vocab_size() > vocab_size)
      throw std::runtime_error("token shard '" + f + "' was made by a tokenizer of " + std::to_string(shard->vocab_size()) +
                               " tokens, more than model.tokenizer_path's " + std::to_string(vocab_size));
    starts_.push_back(total);
    total += shard->size();
    shards_.push_back(std::move(shard));
  }
  const int64_t windows = total / window_;
  rank_windows_ = windows / share.degree + (share.rank < windows % share.degree ? 1 : 0);
  if (rank_windows_ < 1)
    throw std::runtime_error("the token shards hold " + std::to_string(total) + " tokens: no window of seq_len+1 = " +
                             std::to_string(window_) + " for data-parallel rank " + std::to_string(share.rank) + " of " +
                             std::to_string(share.degree));
}

void ShardWindows::next_window(int64_t* out) {
  if (next_ == rank_windows_) {
    ++epoch_;
    next_ = 0;
  }
  int64_t token = (next_++ * share_.degree + share_.rank) * window_;
  // A window may span shards.
  auto s = static_cast<size_t>(std::upper_bound(starts_.begin(), starts_.end(), token) - starts_.begin() - 1);
  for (int64_t filled = 0; filled < window_; ++s) {
    const int64_t begin = token - starts_[s];
    const int64_t n = std::min(window_ - filled, shards_[s]->size() - begin);
    shards_[s]->copy(begin, n, out + filled);
    filled += n;
    token += n;
  }
}

void ShardWindows::seek(const DataPosition& pos) {
  if (pos.epoch < 0 || pos.index < 0 || pos.index > rank_windows_)
    throw std::runtime_error("data position (window " + std::to_string(pos.index) + ") is past the token shards' " +
                             std::to_string(rank_windows_) + " windows of this rank: did the shards change?");
  epoch_ = pos.epoch;
  next_ = pos.index;
}

}  // namespace troupe::data
