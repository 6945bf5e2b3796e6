// Tokenizer speed in MB/s, one thread and all cores, against Hugging Face `tokenizers` (its
// Rust core through Python) on the same documents in the same run.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>
#include <vector>

#include "bench/benchmarks.h"
#include "data/tokenizer.h"

namespace troupe::bench {

namespace {

std::vector<std::string> paragraphs(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("text file '" + path + "' cannot be opened");
  std::stringstream buf;
  buf << in.rdbuf();
  const std::string text = buf.str();
  std::vector<std::string> docs;
  for (size_t at = 0; at < text.size();) {
    size_t end = text.find("\n\n", at);
    if (end == std::string::npos) end = text.size();
    if (end > at) docs.push_back(text.substr(at, end - at));
    at = end + 2;
  }
  return docs;
}

// Best of `rounds` wall times for `threads` threads each encoding a contiguous slice.
double seconds_to_encode(const data::Tokenizer& tok, const std::vector<std::string>& docs, int threads, int rounds,
                         int64_t& tokens) {
  double best = 1e30;
  for (int r = 0; r < rounds; ++r) {
    std::vector<int64_t> counts(threads, 0);
    const auto start = std::chrono::steady_clock::now();
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t)
      pool.emplace_back([&, t] {
        for (size_t i = docs.size() * t / threads; i < docs.size() * (t + 1) / threads; ++i)
          counts[t] += static_cast<int64_t>(tok.encode(docs[i]).size());
      });
    for (auto& th : pool) th.join();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    tokens = 0;
    for (auto c : counts) tokens += c;
  }
  return best;
}

}  // namespace

int tokenizer_speed(const config::JobConfig& cfg, const std::string& text_path, int rounds) {
  const auto tok = data::Tokenizer::load(cfg.model.tokenizer_path);
  const auto docs = paragraphs(text_path);
  double bytes = 0;
  for (const auto& d : docs) bytes += static_cast<double>(d.size());
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  int64_t tokens = 0;
  const double one = bytes / seconds_to_encode(tok, docs, 1, rounds, tokens) / 1e6;
  const double all = bytes / seconds_to_encode(tok, docs, cores, rounds, tokens) / 1e6;

  const std::string cmd = "python3 tools/bench/tokenizer_speed.py '" + cfg.model.tokenizer_path + "' '" + text_path + "'";
  double hf_one = 0, hf_all = 0;
  long long hf_tokens = 0;
  if (FILE* p = popen(cmd.c_str(), "r")) {
    if (std::fscanf(p, "%lf %lf %lld", &hf_one, &hf_all, &hf_tokens) != 3) hf_one = hf_all = 0;
    pclose(p);
  }
  std::printf("tokenizer %s, text %s: %.1f MB in %zu documents, %lld tokens, %d cores\n\n",
              cfg.model.tokenizer_path.c_str(), text_path.c_str(), bytes / 1e6, docs.size(), static_cast<long long>(tokens),
              cores);
  std::printf("| tokenizer | 1 thread MB/s | %d threads MB/s | scaling |\n|---|---|---|---|\n", cores);
  std::printf("| troupe | %.1f | %.1f | %.2fx |\n", one, all, all / one);
  if (hf_one > 0) {
    std::printf("| HF tokenizers | %.1f | %.1f | %.2fx |\n", hf_one, hf_all, hf_all / hf_one);
    std::printf("\ntroupe / HF: %.2fx on one thread, %.2fx on all cores%s\n", one / hf_one, all / hf_all,
                hf_tokens == tokens ? " (same token count)" : " (TOKEN COUNTS DIFFER)");
  } else {
    std::printf("\nHF tokenizers could not be measured (`pip install tokenizers`)\n");
  }
  return 0;
}

}  // namespace troupe::bench
