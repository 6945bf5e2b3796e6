// Training throughput of `troupe train` itself (through the actors): tokens/s, MFU and peak GPU
// memory over the steps after a warm-up, as one JSON line (for tools/bench/gpu_vs_pytorch.sh)
// and a table.
#include <algorithm>
#include <cstdio>

#include "bench/benchmarks.h"
#include "cli/run_training.h"

namespace troupe::bench {

namespace {

void report(const config::JobConfig& cfg, int64_t warmup, const actors::TrainOutcome& outcome) {
  double seconds = 0, flops = 0, peak = 0;
  int64_t tokens = 0, active = 0, reserved = 0;
  for (const auto& s : outcome.steps) {
    if (s.step <= warmup) continue;
    seconds += s.wall_seconds;
    flops += s.model_flops;
    tokens += s.tokens;
    peak = s.peak_flops_per_second;
    active = std::max(active, s.gpu_peak_active_bytes);
    reserved = std::max(reserved, s.gpu_peak_reserved_bytes);
  }
  const double tps = tokens / seconds, mfu = peak > 0 ? flops / seconds / peak : 0;
  const double gib = 1024.0 * 1024.0 * 1024.0;
  std::printf("{\"runner\": \"troupe\", \"flavor\": \"%s\", \"batch\": %lld, \"seq\": %lld, \"steps\": %lld, "
              "\"warmup\": %lld, \"tokens_per_s\": %.0f, \"mfu\": %.4f, \"peak_active_gib\": %.2f, "
              "\"peak_reserved_gib\": %.2f, \"final_loss\": %.4f}\n",
              cfg.model.flavor.c_str(), static_cast<long long>(cfg.training.local_batch_size),
              static_cast<long long>(cfg.training.seq_len), static_cast<long long>(cfg.training.steps),
              static_cast<long long>(warmup), tps, mfu, active / gib, reserved / gib, outcome.steps.back().loss);
  std::printf("| runner | tokens/s | MFU | peak active GiB | peak reserved GiB |\n|---|---|---|---|---|\n");
  std::printf("| troupe | %.0f | %.2f%% | %.2f | %.2f |\n", tps, 100 * mfu, active / gib, reserved / gib);
  std::fflush(stdout);
}

}  // namespace

int throughput(const config::JobConfig& cfg, int64_t warmup, const runtime::NodePlacement& placement) {
  if (warmup >= cfg.training.steps) throw std::invalid_argument("--warmup must be below training.steps");
  cli::RunHooks hooks;
  // Node 0 holds the job's step history; a job of several nodes leaves the process right after.
  hooks.on_outcome = [&](const actors::TrainOutcome& outcome) {
    if (outcome.exit_code != 0 || placement.node_rank != 0) return;
    report(cfg, warmup, outcome);
  };
  const auto outcome = cli::run_training(cfg, hooks, placement);
  if (outcome.exit_code != 0) throw std::runtime_error("training failed: " + outcome.message);
  return 0;
}

}  // namespace troupe::bench
