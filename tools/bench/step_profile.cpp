// Where a training step's GPU time goes: drives a Trainer directly (no actors) on random
// tokens, times the steps, then records a few with libtorch's Kineto profiler and prints the
// GPU kernels by total time per step. Optionally writes the Chrome trace.
#include <torch/csrc/autograd/profiler_kineto.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>

#include "bench/benchmarks.h"
#include "data/batch.h"
#include "train/trainer.h"

namespace troupe::bench {

int step_profile(const config::JobConfig& cfg, int64_t vocab, int64_t warmup, int64_t steps,
                 const std::string& trace_path, bool cudnn_attention) {
  train::Trainer trainer(cfg, vocab);
  // The trainer switches SDPA's cuDNN backend off; this measures what it would give.
  if (cudnn_attention) at::globalContext().setSDPUseCuDNN(true);
  const auto B = cfg.training.local_batch_size, S = cfg.training.seq_len;
  auto batch = [&] {
    auto tokens = torch::randint(0, vocab, {B, S + 1}, torch::kLong);
    auto b = std::make_shared<data::Batch>();
    b->tokens = tokens.narrow(1, 0, S).contiguous();
    b->targets = tokens.narrow(1, 1, S).contiguous();
    return std::shared_ptr<const data::Batch>(std::move(b));
  };
  const auto b = batch();
  int64_t step = 0;
  double seconds = 0;
  for (int64_t i = 0; i < warmup + steps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    trainer.step(++step, {b});  // ends by reading the loss back: the step is finished
    if (i >= warmup) seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  std::printf("plain loop: %.2f ms/step, %.0f tokens/s over %lld steps\n", 1e3 * seconds / steps,
              static_cast<double>(B * S * steps) / seconds, static_cast<long long>(steps));

  namespace prof = torch::autograd::profiler;
  using torch::profiler::impl::ActivityType;
  const torch::profiler::impl::ProfilerConfig config(torch::profiler::impl::ProfilerState::KINETO);
  const std::set<ActivityType> activities{ActivityType::CPU, ActivityType::CUDA};
  prof::prepareProfiler(config, activities);
  prof::enableProfiler(config, activities);
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < steps; ++i) trainer.step(++step, {b});
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  auto result = prof::disableProfiler();
  struct Total {
    double ns = 0;
    int64_t calls = 0;
  };
  std::map<std::string, Total> kernels;
  double busy = 0;
  for (const auto& e : result->events()) {
    if (e.deviceType() != c10::DeviceType::CUDA) continue;
    auto& t = kernels[e.name().substr(0, 110)];
    t.ns += static_cast<double>(e.durationNs());
    ++t.calls;
    busy += static_cast<double>(e.durationNs());
  }
  std::vector<std::pair<std::string, Total>> sorted(kernels.begin(), kernels.end());
  std::sort(sorted.begin(), sorted.end(), [](const auto& a, const auto& b) { return a.second.ns > b.second.ns; });
  std::printf("profiled %lld steps: wall %.2f ms/step, GPU busy %.2f ms/step\n", static_cast<long long>(steps),
              1e3 * wall / steps, busy / 1e6 / steps);
  std::printf("| ms/step | calls/step | GPU activity |\n|---|---|---|\n");
  for (const auto& [name, t] : sorted)
    if (t.ns / 1e6 / steps >= 0.05)
      std::printf("| %.3f | %.1f | %s |\n", t.ns / 1e6 / steps, static_cast<double>(t.calls) / steps, name.c_str());
  if (!trace_path.empty()) result->save(trace_path);
  return 0;
}

}  // namespace troupe::bench
