// Benchmarks of `troupe_bench`; each prints a markdown table.
#pragma once
#include <ATen/core/Tensor.h>

#include <functional>
#include <string>

#include "config/job_config.h"
#include "runtime/node_placement.h"

namespace troupe::bench {

int actor_overhead(const config::JobConfig& cfg, int rounds);
int tokenizer_speed(const config::JobConfig& cfg, const std::string& text_path, int rounds);
// `consumed_tps`: what training takes (the 1.50B model on one H100 consumes about 60k tokens/s).
int loader_throughput(const config::JobConfig& cfg, int64_t batches, double consumed_tps);
int checkpoint_blocking(const config::JobConfig& cfg, int rounds);
// With several nodes (`placement`), node 0 prints the figures of the whole job; every node then
// leaves the process (run_training's rule for a job of several nodes).
int throughput(const config::JobConfig& cfg, int64_t warmup, const runtime::NodePlacement& placement = {});
// Tokens/s with an inspection client polling as the console does vs none, in alternate windows
// of `window` seconds of one run.
int inspect_overhead(const config::JobConfig& cfg, double window);
// Plain-loop step time and the GPU kernels of `steps` profiled steps (random tokens of `vocab`),
// on every local rank (job.local_ranks), per GPU. `alone_as` = 1: one rank under FSDP over a real
// one-rank group; N > 1: one rank as rank 0 of a world of N, replicas standing in for the others
// (parallel::RankContext::replicas).
int step_profile(const config::JobConfig& cfg, int64_t vocab, int64_t warmup, int64_t steps,
                 const std::string& trace_path, int alone_as, int64_t document_tokens = 0,
                 const std::string& memory_history_path = {});
// [rows, seq] documents of 1 .. 2n-1 tokens (n on average), the same on every call.
at::Tensor random_documents(int64_t rows, int64_t seq, int64_t n);
// One context-parallel rank's share of attention against the whole sequence's (forward and
// backward, bf16 on the GPU): every rank's time and the load balance.
int attention_share(const config::JobConfig& cfg, int64_t cp, int64_t document_tokens, int64_t rounds);
// One expert-parallel rank's share of the routed experts against the whole (forward and backward,
// bf16 on the GPU, balanced load): its grouped GEMMs against 1/ep of the unsharded experts', the
// dispatch and combine around them (replicas standing in for the other ep ranks), and memory.
int expert_share(const config::JobConfig& cfg, int64_t ep, int64_t rounds);

// GPU work timed: the best of `rounds` runs (after one to warm up), and the peak memory.
struct Timing {
  double ms = 0;
  double peak_gib = 0;
};
Timing time_work(const std::function<void()>& work, int64_t rounds);

}  // namespace troupe::bench
