// `troupe data prepare`: text or JSON Lines documents tokenized in parallel (BOS/EOS around
// each, as the loader packs them) into token shards that the `tokens` dataset memory-maps.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "data/document_reader.h"

namespace troupe::data {

struct PrepareOptions {
  std::vector<std::string> files;  // read in this order
  TextFormat format = TextFormat::PlainText;
  std::string text_field = "text";
  std::string tokenizer_path;
  std::string output_dir;                // shard-00000.tokens, shard-00001.tokens, ...
  int64_t shard_tokens = int64_t(1) << 28;  // tokens per shard at most (a document may cross shards)
  int workers = 1;
};

struct PrepareProgress {
  int64_t bytes_done = 0, bytes_total = 0;
  int64_t documents = 0, tokens = 0;
  SkipCounts skips;
  std::vector<std::string> shards;
};

// Calls `progress` after each document batch and once at the end.
PrepareProgress prepare_shards(const PrepareOptions& options, const std::function<void(const PrepareProgress&)>& progress,
                               SkipLog log);

}  // namespace troupe::data
