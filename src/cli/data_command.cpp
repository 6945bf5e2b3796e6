#include <CLI/CLI.hpp>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <memory>
#include <thread>

#include "cli/commands.h"
#include "data/dataset_files.h"
#include "data/shard_preparer.h"

namespace troupe::cli {

namespace {

struct PrepareArgs {
  std::string input, format = "text", text_field = "text", tokenizer, output;
  int64_t shard_tokens = int64_t(1) << 28;
  int workers = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
};

// One line redrawn in place on a terminal; on a pipe, a line every few seconds instead.
class ProgressBar {
 public:
  void show(const data::PrepareProgress& p, bool last) {
    const auto now = std::chrono::steady_clock::now();
    const double every = tty_ ? 0.2 : 5.0;
    if (!last && std::chrono::duration<double>(now - shown_).count() < every) return;
    shown_ = now;
    const double seconds = std::chrono::duration<double>(now - start_).count();
    const double frac = p.bytes_total > 0 ? double(p.bytes_done) / double(p.bytes_total) : 1.0;
    const int width = 30, filled = static_cast<int>(frac * width);
    std::fprintf(stderr, "%s[%s%s] %5.1f%%  %.1f MB/s  %lld documents  %lld tokens%s", tty_ ? "\r" : "",
                 std::string(filled, '#').c_str(), std::string(width - filled, '.').c_str(), 100 * frac,
                 seconds > 0 ? p.bytes_done / seconds / 1e6 : 0.0, static_cast<long long>(p.documents),
                 static_cast<long long>(p.tokens), tty_ && !last ? "" : "\n");
  }

 private:
  bool tty_ = ::isatty(STDERR_FILENO);
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now(), shown_{};
};

int run_prepare(const PrepareArgs& a) {
  data::PrepareOptions o;
  o.files = data::dataset_files(a.input);
  o.format = a.format == "jsonl" ? data::TextFormat::JsonLines : data::TextFormat::PlainText;
  o.text_field = a.text_field;
  o.tokenizer_path = a.tokenizer;
  o.output_dir = a.output;
  o.shard_tokens = a.shard_tokens;
  o.workers = a.workers;
  ProgressBar bar;
  const auto result = data::prepare_shards(
      o, [&](const data::PrepareProgress& p) { bar.show(p, p.bytes_done == p.bytes_total); },
      [](const std::string& m) { std::cerr << "\ntroupe data: " << m << '\n'; });
  std::printf("wrote %zu shard(s), %lld tokens of %lld documents from %zu file(s) to %s; skipped %lld document(s) (%s)\n",
              result.shards.size(), static_cast<long long>(result.tokens), static_cast<long long>(result.documents),
              o.files.size(), o.output_dir.c_str(), static_cast<long long>(result.skips.total()),
              result.skips.breakdown("\"" + o.text_field + "\"").c_str());
  return 0;
}

}  // namespace

Action add_data_command(CLI::App& app) {
  auto a = std::make_shared<PrepareArgs>();
  auto* cmd = app.add_subcommand("data", "Prepare datasets");
  cmd->require_subcommand(1);
  auto* prep = cmd->add_subcommand("prepare", "Tokenize text or JSON Lines into token shards (dataset = \"tokens\")");
  prep->add_option("--input", a->input, "a file, a directory or a glob (quote it)")->required();
  prep->add_option("--format", a->format, "text (blank-line separated documents) or jsonl")
      ->check(CLI::IsMember({"text", "jsonl"}))
      ->capture_default_str();
  prep->add_option("--text-field", a->text_field, "jsonl: the key holding each document")->capture_default_str();
  prep->add_option("--tokenizer", a->tokenizer, "tokenizer.json or tiktoken rank file")->required();
  prep->add_option("--output", a->output, "directory for shard-NNNNN.tokens")->required();
  prep->add_option("--shard-tokens", a->shard_tokens, "tokens per shard at most")->check(CLI::PositiveNumber)->capture_default_str();
  prep->add_option("--workers", a->workers, "tokenizing threads")->check(CLI::PositiveNumber)->capture_default_str();
  return [=]() -> int {
    if (!prep->parsed()) return -1;
    try {
      return run_prepare(*a);
    } catch (const std::exception& e) {
      std::cerr << "troupe data: " << e.what() << '\n';
      return 1;
    }
  };
}

}  // namespace troupe::cli
