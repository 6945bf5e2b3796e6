// Tokens per second that the data pipeline (read, tokenize on worker threads, pack, cut
// batches) supplies, against what training consumes.
#include <chrono>
#include <cstdio>

#include "bench/benchmarks.h"
#include "data/batch_source.h"

namespace troupe::bench {

int loader_throughput(const config::JobConfig& cfg, int64_t batches, double consumed_tps) {
  data::BatchSource source(cfg);  // start-up (tokenizer load, first chunks) is left out
  const auto start = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < batches; ++i) source.next();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const double tokens = static_cast<double>(batches * cfg.training.local_batch_size * cfg.training.seq_len);
  const double tps = tokens / seconds;
  std::printf("dataset %s %s, batch %lld x %lld, %lld batches\n\n", cfg.training.dataset.c_str(),
              cfg.training.dataset_path.c_str(), static_cast<long long>(cfg.training.local_batch_size),
              static_cast<long long>(cfg.training.seq_len), static_cast<long long>(batches));
  std::printf("| supplied tokens/s | consumed tokens/s | headroom |\n|---|---|---|\n");
  std::printf("| %.0f | %.0f | %.1fx |\n", tps, consumed_tps, tps / consumed_tps);
  return 0;
}

}  // namespace troupe::bench
