// Throughput of the same training job through the actors and through a plain loop over the
// same Trainer and batches, alternating the two so that machine noise hits both alike.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <thread>
#include <vector>

#include "bench/benchmarks.h"
#include "data/batch_source.h"
#include "cli/run_training.h"
#include "train/job_model.h"
#include "train/trainer.h"
#include "data/tokenizer.h"

namespace troupe::bench {

namespace {

using clock = std::chrono::steady_clock;

struct Measured {
  int64_t tokens = 0;
  double seconds = 0;
  double compute_seconds = 0;  // inside Trainer::step alone
  double tps() const { return tokens / seconds; }
};

// Steps after the first: the first pays one-off allocation and warm-up costs in both paths.
Measured plain_loop(const config::JobConfig& cfg) {
  const auto vocab = data::Tokenizer::load(cfg.model.tokenizer_path).vocab_size();
  data::BatchSource source(cfg);
  train::Trainer trainer(cfg, train::job_model(cfg, vocab));
  Measured m;
  for (int64_t step = 1; step <= cfg.training.steps; ++step) {
    const auto t0 = clock::now();
    std::vector<std::shared_ptr<const data::Batch>> micro;
    for (int64_t i = 0; i < trainer.micro_batches_per_step(); ++i)
      micro.push_back(std::make_shared<const data::Batch>(source.next()));
    const auto stats = trainer.step(step, micro);
    if (step == 1) continue;
    m.seconds += std::chrono::duration<double>(clock::now() - t0).count();
    m.compute_seconds += stats.compute_seconds;
    m.tokens += stats.tokens;
  }
  return m;
}

Measured through_actors(const config::JobConfig& cfg) {
  const auto outcome = cli::run_training(cfg);
  if (outcome.exit_code != 0) throw std::runtime_error("actor run failed: " + outcome.message);
  Measured m;
  for (const auto& s : outcome.steps)
    if (s.step > 1) {
      m.seconds += s.wall_seconds;
      m.compute_seconds += s.compute_seconds;
      m.tokens += s.tokens;
    }
  return m;
}

}  // namespace

int actor_overhead(const config::JobConfig& cfg, int rounds) {
  std::vector<double> plain, actors, plain_compute, actors_compute;
  for (int r = 0; r < rounds; ++r) {
    // The plain loop runs on a thread of its own, as the stage does: libgomp keeps a worker pool
    // per thread that started a parallel region and spins less once more workers exist than
    // cores, so a pool left behind on the main thread would slow the actor run that follows.
    Measured p;
    std::thread([&] { p = plain_loop(cfg); }).join();
    const auto a = through_actors(cfg);
    plain.push_back(p.tps());
    actors.push_back(a.tps());
    plain_compute.push_back(p.compute_seconds / p.seconds);
    actors_compute.push_back(a.compute_seconds / a.seconds);
  }
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  const double p = median(plain), a = median(actors);
  std::printf("\nactor overhead: %s, batch %lld x seq %lld, %lld steps (first excluded), %d rounds, device %s\n",
              cfg.model.flavor.c_str(), static_cast<long long>(cfg.training.local_batch_size),
              static_cast<long long>(cfg.training.seq_len), static_cast<long long>(cfg.training.steps), rounds,
              train::resolve_device(cfg.job.device).c_str());
  std::printf("| path | tokens/s (median) | runs | share of wall time in Trainer::step |\n|---|---|---|---|\n");
  auto runs = [](const std::vector<double>& v) {
    std::string s;
    for (double x : v) s += (s.empty() ? "" : " ") + std::to_string(static_cast<long long>(x));
    return s;
  };
  std::printf("| plain loop | %.0f | %s | %.4f |\n", p, runs(plain).c_str(), median(plain_compute));
  std::printf("| actors | %.0f | %s | %.4f |\n", a, runs(actors).c_str(), median(actors_compute));
  std::printf("| actors / plain | %.4f | target >= 0.97 | |\n", a / p);
  return 0;
}

}  // namespace troupe::bench
