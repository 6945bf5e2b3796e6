// Tokens/s with the inspection console attached vs not, in one run: a client polls as the web
// page does (/api/status every second, the new rows of /api/history every two, /api/moe and
// /api/timeline when the status says they moved)
// during alternate windows of `window` seconds; each step counts for the window it ran in (its
// time reconstructed from the step durations back from the end of the run), steps near a window
// edge and the warm-up are left out.
#include <httplib.h>
#include <nlohmann/json.hpp>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <thread>

#include "bench/benchmarks.h"
#include "cli/run_training.h"

namespace troupe::bench {

int inspect_overhead(const config::JobConfig& base, double window) {
  auto cfg = base;
  cfg.inspect.enable = true;
  using clock = std::chrono::steady_clock;
  const auto start = clock::now();
  auto since_start = [&](clock::time_point t) { return std::chrono::duration<double>(t - start).count(); };
  auto attached_at = [&](double t) { return static_cast<int64_t>(std::floor(t / window)) % 2 == 1; };
  std::atomic<bool> done{false};
  int64_t polls = 0;
  std::thread console([&] {
    httplib::Client c("127.0.0.1", static_cast<int>(cfg.inspect.port));
    double last_step = -1;
    int64_t moe_step = 0, timeline_step = 0;
    for (int tick = 0; !done; ++tick) {
      if (attached_at(since_start(clock::now()))) {
        auto status = c.Get("/api/status");
        if (status && status->status == 200) {
          ++polls;
          const auto job = nlohmann::json::parse(status->body)["job"];
          if (job.value("moe_step", int64_t{0}) != moe_step && c.Get("/api/moe")) moe_step = job["moe_step"];
          if (job.value("timeline_step", int64_t{0}) != timeline_step && c.Get("/api/timeline"))
            timeline_step = job["timeline_step"];
        }
        if (tick % 2 == 0)
          if (auto h = c.Get(("/api/history?after=" + std::to_string(last_step)).c_str()); h && h->status == 200) {
            const auto rows = nlohmann::json::parse(h->body)["rows"];
            if (!rows.empty()) last_step = rows.back()[0];
          }
      }
      std::this_thread::sleep_for(std::chrono::seconds(1));
    }
  });
  const auto outcome = cli::run_training(cfg);
  const double end = since_start(clock::now());
  done = true;
  console.join();
  if (outcome.exit_code != 0) throw std::runtime_error("training failed: " + outcome.message);
  double t = end, seconds[2] = {0, 0}, tokens[2] = {0, 0};
  int64_t steps[2] = {0, 0};
  for (auto it = outcome.steps.rbegin(); it != outcome.steps.rend(); ++it) {
    const double finished = t, began = t - it->wall_seconds;
    t = began;
    if (it->step <= 3) continue;  // warm-up
    const double edge = 0.3 * window;
    if (std::floor((began - edge) / window) != std::floor((finished + edge) / window)) continue;
    const int on = attached_at(0.5 * (began + finished)) ? 1 : 0;
    seconds[on] += it->wall_seconds;
    tokens[on] += static_cast<double>(it->tokens);
    ++steps[on];
  }
  if (steps[0] == 0 || steps[1] == 0) throw std::runtime_error("too few steps in each window: train longer");
  const double off_tps = tokens[0] / seconds[0], on_tps = tokens[1] / seconds[1];
  std::printf("| console | steps | tokens/s | ratio |\n|---|---|---|---|\n");
  std::printf("| not attached | %lld | %.0f | 1.000 |\n", static_cast<long long>(steps[0]), off_tps);
  std::printf("| attached (%lld status polls) | %lld | %.0f | %.4f |\n", static_cast<long long>(polls),
              static_cast<long long>(steps[1]), on_tps, on_tps / off_tps);
  return 0;
}

}  // namespace troupe::bench
