// Tokens/s with the inspection console attached (a client polling /api/status every second, as
// `troupe inspect` does, and /api/history every two, as the web page does) vs no client, in
// alternating rounds of one invocation.
#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <thread>
#include <vector>

#include "bench/benchmarks.h"
#include "runtime/run_training.h"

namespace troupe::bench {

namespace {

double tokens_per_second(const runtime::TrainOutcome& out, int64_t warmup) {
  double seconds = 0, tokens = 0;
  for (const auto& s : out.steps)
    if (s.step > warmup) {
      seconds += s.wall_seconds;
      tokens += static_cast<double>(s.tokens);
    }
  return seconds > 0 ? tokens / seconds : 0;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int inspect_overhead(const config::JobConfig& base, int rounds) {
  auto cfg = base;
  cfg.inspect.enable = true;
  const int64_t warmup = std::min<int64_t>(3, cfg.training.steps - 1);
  std::vector<double> off, on;
  int64_t polls = 0;
  for (int r = 0; r < rounds; ++r) {
    // Alternate which goes first, so that drift over the run does not favour either.
    for (bool attached : r % 2 == 0 ? std::vector<bool>{false, true} : std::vector<bool>{true, false}) {
      std::atomic<bool> done{false};
      std::thread console;
      if (attached)
        console = std::thread([&] {
          httplib::Client c("127.0.0.1", static_cast<int>(cfg.inspect.port));
          for (int tick = 0; !done; ++tick) {
            if (c.Get("/api/status")) ++polls;
            if (tick % 2 == 0) c.Get("/api/history");
            for (int i = 0; i < 10 && !done; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
          }
        });
      const auto outcome = runtime::run_training(cfg);
      done = true;
      if (console.joinable()) console.join();
      if (outcome.exit_code != 0) throw std::runtime_error("training failed: " + outcome.message);
      (attached ? on : off).push_back(tokens_per_second(outcome, warmup));
    }
  }
  const double a = median(off), b = median(on);
  std::printf("| console | tokens/s (median of %d) | ratio |\n|---|---|---|\n", rounds);
  std::printf("| not attached | %.0f | 1.000 |\n| attached (%lld status polls) | %.0f | %.3f |\n", a,
              static_cast<long long>(polls), b, b / a);
  return 0;
}

}  // namespace troupe::bench
