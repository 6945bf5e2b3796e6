// Pre-tokenized shards: what `troupe data prepare` writes and the `tokens` dataset reads,
// memory-mapped. Layout (little-endian): the 8 bytes "TRPTOKS1", uint32 bytes per token (2 or
// 4), uint32 vocabulary size of the tokenizer that made it, uint64 token count, the tokens.
#pragma once
#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

namespace troupe::data {

constexpr int64_t kShardHeaderBytes = 24;

// A read-only mapping of one shard; std::runtime_error naming the file if it is not a shard,
// is truncated, or cannot be mapped.
class TokenShard {
 public:
  explicit TokenShard(const std::string& path);
  ~TokenShard();
  TokenShard(const TokenShard&) = delete;
  TokenShard& operator=(const TokenShard&) = delete;

  int64_t size() const { return count_; }
  int64_t vocab_size() const { return vocab_size_; }
  // Copies tokens [begin, begin + n) widened to int64 into out; std::runtime_error naming the
  // file and the position if one is outside the vocabulary the header gives (a damaged file):
  // caught here it is a clear error, in the embedding a failure of one rank mid-step.
  void copy(int64_t begin, int64_t n, int64_t* out) const;

 private:
  std::string path_;
  const unsigned char* map_ = nullptr;
  size_t map_bytes_ = 0;
  int64_t width_ = 0, vocab_size_ = 0, count_ = 0;
};

// Writes one shard; the header's count is filled in by finish().
class TokenShardWriter {
 public:
  TokenShardWriter(const std::string& path, int64_t vocab_size);
  void append(const int32_t* tokens, size_t n);
  int64_t written() const { return count_; }
  void finish();

 private:
  std::string path_;
  std::ofstream out_;
  int64_t width_, vocab_size_, count_ = 0;
};

}  // namespace troupe::data
