#include "data/batch_source.h"

#include <torch/torch.h>

#include <iostream>
#include <thread>

#include "data/dataset_files.h"
#include "data/packed_text_windows.h"
#include "data/shard_windows.h"
#include "data/tokenizer.h"

namespace troupe::data {

namespace {

int default_workers() {
  const int cores = static_cast<int>(std::thread::hardware_concurrency());
  return std::max(1, cores - 1);  // one core stays with the loader and the trainer
}

std::unique_ptr<WindowStream> make_windows(const DatasetSpec& spec, const Tokenizer& tokenizer, DataShare share,
                                           SkipLog log) {
  if (spec.kind == "tokens") return std::make_unique<ShardWindows>(dataset_files(spec.path), tokenizer.vocab_size(), share, spec.seq_len);
  TextFormat format;
  std::string path = spec.path;
  if (spec.kind == "kjv") {
    format = TextFormat::PlainText;
    if (path.empty()) path = "data/kjv/kjv.txt";
  } else if (spec.kind == "text") {
    format = TextFormat::PlainText;
  } else if (spec.kind == "jsonl") {
    format = TextFormat::JsonLines;
  } else {
    throw std::invalid_argument("dataset '" + spec.kind + "' is not supported (kjv, text, jsonl, tokens)");
  }
  if (path.empty()) throw std::invalid_argument("dataset '" + spec.kind + "' needs a dataset_path");
  auto reader = std::make_unique<DocumentReader>(dataset_files(path), format, spec.text_field, std::move(log));
  return std::make_unique<PackedTextWindows>(std::move(reader), tokenizer, share, spec.seq_len,
                                             spec.workers > 0 ? spec.workers : default_workers());
}

}  // namespace

DatasetSpec DatasetSpec::training(const config::JobConfig& cfg) {
  return {cfg.training.dataset, cfg.training.dataset_path, cfg.training.dataset_text_field, cfg.model.tokenizer_path,
          cfg.training.local_batch_size, cfg.training.seq_len, 0};
}

DatasetSpec DatasetSpec::validation(const config::JobConfig& cfg) {
  return {cfg.validation.dataset, cfg.validation.dataset_path, cfg.training.dataset_text_field, cfg.model.tokenizer_path,
          cfg.training.local_batch_size, cfg.training.seq_len, 0};
}

at::Tensor document_ids(const at::Tensor& tokens, int64_t eos) {
  // A token's document is the number of EOS tokens before it in its row.
  const auto ends = tokens.eq(eos).to(at::kLong);
  return ends.cumsum(1) - ends;
}

void log_skip_to_stderr(const std::string& message) { std::cerr << "data: " << message << '\n'; }

BatchSource::BatchSource(const config::JobConfig& cfg, DataShare share) : BatchSource(DatasetSpec::training(cfg), share) {}

BatchSource::BatchSource(const DatasetSpec& spec, DataShare share, SkipLog log)
    : batch_size_(spec.batch_size), seq_len_(spec.seq_len) {
  const auto tokenizer = Tokenizer::load(spec.tokenizer_path);
  eos_ = tokenizer.eos_id();
  windows_ = make_windows(spec, tokenizer, share, std::move(log));
}

BatchSource::~BatchSource() = default;

Batch BatchSource::next() {
  // One window of seq_len+1 tokens per row gives both the inputs and the shifted targets.
  auto window = torch::empty({batch_size_, seq_len_ + 1}, torch::kLong);
  auto* out = window.data_ptr<int64_t>();
  for (int64_t b = 0; b < batch_size_; ++b) windows_->next_window(out + b * (seq_len_ + 1));
  Batch batch;
  batch.tokens = window.narrow(1, 0, seq_len_).contiguous();
  batch.targets = window.narrow(1, 1, seq_len_).contiguous();
  if (eos_) batch.documents = document_ids(batch.tokens, *eos_);
  batch.sequence = produced_++;
  batch.next = position();
  return batch;
}

DataPosition BatchSource::position() const {
  auto pos = windows_->position();
  pos.produced = produced_;
  return pos;
}

void BatchSource::seek(const DataPosition& pos) {
  windows_->seek(pos);
  produced_ = pos.produced;
}

SkipCounts BatchSource::skips() const {
  if (auto* text = dynamic_cast<const PackedTextWindows*>(windows_.get())) return text->skips();
  return {};
}

}  // namespace troupe::data
