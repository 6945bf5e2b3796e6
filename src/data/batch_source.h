// Training (or validation) batches from a configured dataset: text or JSON Lines documents
// tokenized ahead on worker threads and packed as torchtitan packs them, or pre-tokenized
// shards; each data-parallel rank reads its own deterministic share. The data loader actor
// owns one; the benchmark's plain loop and the tests use one directly.
#pragma once
#include <memory>
#include <optional>
#include <string>

#include "config/job_config.h"
#include "data/batch.h"
#include "data/document_reader.h"
#include "data/tokenize_ahead.h"
#include "data/window_stream.h"

namespace troupe::data {

struct DatasetSpec {
  std::string kind = "kjv";  // kjv | text | jsonl | tokens
  std::string path;          // file, directory or glob; empty for kjv: the bundled file
  std::string text_field = "text";
  std::string tokenizer_path;
  int64_t batch_size = 1, seq_len = 2;
  int workers = 0;  // tokenizing threads; 0: all cores but one (at least one)

  static DatasetSpec training(const config::JobConfig& cfg);
  static DatasetSpec validation(const config::JobConfig& cfg);
};

// Logs a skipped document to stderr.
void log_skip_to_stderr(const std::string& message);

class BatchSource {
 public:
  // std::runtime_error naming the file when the tokenizer or a dataset file is unusable.
  explicit BatchSource(const config::JobConfig& cfg, DataShare share = {});
  BatchSource(const DatasetSpec& spec, DataShare share, SkipLog log = log_skip_to_stderr);
  ~BatchSource();

  // The next [batch_size, seq_len] batch.
  Batch next();
  int64_t produced() const { return produced_; }
  // Where the next batch starts; seek() to it in a fresh source to continue exactly there.
  DataPosition position() const;
  void seek(const DataPosition& pos);
  // Documents skipped so far (zero for shards).
  SkipCounts skips() const;

 private:
  std::unique_ptr<WindowStream> windows_;
  std::optional<int32_t> eos_;  // where documents end
  int64_t batch_size_, seq_len_, produced_ = 0;
};

}  // namespace troupe::data
