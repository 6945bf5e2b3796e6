// Training batches from a tokenized corpus in the sampler's deterministic order. The data
// loader actor owns one; the benchmark's plain loop uses one directly.
#pragma once
#include <memory>

#include "config/job_config.h"
#include "data/batch.h"
#include "data/window_sampler.h"

namespace troupe::data {

class BatchSource {
 public:
  // Tokenizes the configured dataset with the configured tokenizer (seconds for the bundled one).
  explicit BatchSource(const config::JobConfig& cfg);
  // The next [local_batch_size, seq_len] batch.
  Batch next();
  int64_t produced() const { return produced_; }
  int64_t num_tokens() const { return static_cast<int64_t>(tokens_.size()); }

 private:
  std::vector<int32_t> tokens_;
  std::unique_ptr<WindowSampler> sampler_;
  int64_t batch_size_, seq_len_, produced_ = 0;
};

}  // namespace troupe::data
