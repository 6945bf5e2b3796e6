// Windows over pre-tokenized shards (already packed with BOS/EOS by `troupe data prepare`):
// the shards' concatenation cut into consecutive windows of seq_len+1 tokens, window w going
// to data-parallel rank w mod degree; the tail too short for a window is dropped each pass.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "data/token_shards.h"
#include "data/tokenize_ahead.h"
#include "data/window_stream.h"

namespace troupe::data {

class ShardWindows : public WindowStream {
 public:
  // std::runtime_error if a shard is unreadable, was made with a larger vocabulary than
  // `vocab_size`, or the shards hold no window for this rank.
  ShardWindows(const std::vector<std::string>& files, int64_t vocab_size, DataShare share, int64_t seq_len);
  void next_window(int64_t* out) override;
  DataPosition position() const override { return {.epoch = epoch_, .index = next_}; }
  void seek(const DataPosition& pos) override;

 private:
  std::vector<std::unique_ptr<TokenShard>> shards_;
  std::vector<int64_t> starts_;  // first global token of each shard
  DataShare share_;
  int64_t window_, rank_windows_;
  int64_t epoch_ = 0, next_ = 0;
};

}  // namespace troupe::data
