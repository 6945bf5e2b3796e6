#include "data/batch_source.h"

#include <torch/torch.h>

#include "data/token_corpus.h"
#include "data/tokenizer.h"

namespace troupe::data {

BatchSource::BatchSource(const config::JobConfig& cfg)
    : batch_size_(cfg.training.local_batch_size), seq_len_(cfg.training.seq_len) {
  const auto tokenizer = Tokenizer::load(cfg.model.tokenizer_path);
  tokens_ = tokenize_corpus(dataset_file(cfg.training.dataset, cfg.training.dataset_path), tokenizer);
  sampler_ = std::make_unique<WindowSampler>(num_tokens(), seq_len_, static_cast<uint64_t>(cfg.job.seed));
}

Batch BatchSource::next() {
  // One window of seq_len+1 tokens per row gives both the inputs and the shifted targets.
  auto window = torch::empty({batch_size_, seq_len_ + 1}, torch::kLong);
  auto* out = window.data_ptr<int64_t>();
  for (int64_t b = 0; b < batch_size_; ++b) {
    const int64_t offset = sampler_->next();
    for (int64_t t = 0; t <= seq_len_; ++t) out[b * (seq_len_ + 1) + t] = tokens_[offset + t];
  }
  Batch batch;
  batch.tokens = window.narrow(1, 0, seq_len_).contiguous();
  batch.targets = window.narrow(1, 1, seq_len_).contiguous();
  batch.sequence = produced_++;
  return batch;
}

}  // namespace troupe::data
