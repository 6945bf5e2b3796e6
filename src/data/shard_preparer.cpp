#include "data/shard_preparer.h"

#include <cstdio>
#include <filesystem>
#include <memory>
#include <stdexcept>

#include "data/token_shards.h"
#include "data/tokenize_ahead.h"
#include "data/tokenizer.h"

namespace troupe::data {

namespace {

std::string shard_path(const std::string& dir, size_t index) {
  char name[32];
  std::snprintf(name, sizeof name, "shard-%05zu.tokens", index);
  return (std::filesystem::path(dir) / name).string();
}

}  // namespace

PrepareProgress prepare_shards(const PrepareOptions& options, const std::function<void(const PrepareProgress&)>& progress,
                               SkipLog log) {
  if (options.shard_tokens < 1) throw std::invalid_argument("shard size must be at least one token");
  auto tokenizer = Tokenizer::load(options.tokenizer_path);
  const int64_t vocab = tokenizer.vocab_size();
  PrepareProgress p;
  std::vector<int64_t> file_starts;  // bytes of the files before each
  for (const auto& f : options.files) {
    file_starts.push_back(p.bytes_total);
    p.bytes_total += static_cast<int64_t>(std::filesystem::file_size(f));
  }
  std::filesystem::create_directories(options.output_dir);
  DocumentReader reader(options.files, options.format, options.text_field, std::move(log));
  TokenizeAhead ahead(reader, std::move(tokenizer), {}, options.workers, TokenizeAhead::Passes::Once);
  std::unique_ptr<TokenShardWriter> shard;
  auto write = [&](const std::vector<int32_t>& tokens) {
    size_t done = 0;
    while (done < tokens.size()) {
      if (!shard || shard->written() == options.shard_tokens) {
        if (shard) shard->finish();
        p.shards.push_back(shard_path(options.output_dir, p.shards.size()));
        shard = std::make_unique<TokenShardWriter>(p.shards.back(), vocab);
      }
      const size_t n = std::min(tokens.size() - done, static_cast<size_t>(options.shard_tokens - shard->written()));
      shard->append(tokens.data() + done, n);
      done += n;
    }
  };
  TokenizedDocument doc;
  while (ahead.next(doc)) {
    write(doc.tokens);
    ++p.documents;
    p.tokens += static_cast<int64_t>(doc.tokens.size());
    p.bytes_done = file_starts[doc.place.file] + doc.place.offset;
    if (p.documents % 256 == 0) progress(p);
  }
  if (shard) shard->finish();
  if (p.tokens == 0) throw std::runtime_error("the input holds no usable document; no shard written");
  p.bytes_done = p.bytes_total;
  p.skips = reader.skips();
  progress(p);
  return p;
}

}  // namespace troupe::data
