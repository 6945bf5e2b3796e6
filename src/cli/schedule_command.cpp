#include <CLI/CLI.hpp>

#include <fstream>
#include <iostream>
#include <memory>

#include "cli/commands.h"
#include "parallel/pipeline_render.h"

namespace troupe::cli {

namespace {

struct ScheduleArgs {
  int pp = 2, microbatches = 4, virtual_stages = 0;
  std::string schedule = "1F1B", trace;
  bool actions = false;
};

int run_schedule(const ScheduleArgs& a) {
  try {
    const auto s = parallel::pp::make_schedule(a.schedule, a.pp, a.microbatches, a.virtual_stages);
    const auto t = parallel::pp::check(s);
    std::cout << parallel::pp::render_timeline(s, t);
    if (a.actions)
      for (int r = 0; r < s.ranks; ++r) {
        std::cout << "rank " << r << ":";
        for (const auto& x : s.actions[r]) std::cout << " " << parallel::pp::to_string(x);
        std::cout << "\n";
      }
    if (!a.trace.empty()) {
      std::ofstream f(a.trace);
      // One time unit (a forward) drawn as a millisecond.
      f << parallel::pp::chrome_trace(t, 1000.0, s.name);
      if (!f.flush()) {
        std::cerr << "troupe schedule: cannot write " << a.trace << "\n";
        return 1;
      }
      std::cout << "Chrome trace: " << a.trace << "\n";
    }
    return 0;
  } catch (const parallel::pp::ScheduleError& e) {
    std::cerr << "troupe schedule: " << e.what() << "\n";
    return 2;
  }
}

}  // namespace

Action add_schedule_command(CLI::App& app) {
  auto args = std::make_shared<ScheduleArgs>();
  auto* cmd = app.add_subcommand("schedule", "Show a pipeline schedule as a timeline, its bubble and peak memory");
  cmd->add_option("--pp", args->pp, "pipeline degree (ranks)")->capture_default_str();
  cmd->add_option("--microbatches", args->microbatches, "micro-batches per step")->capture_default_str();
  cmd->add_option("--schedule", args->schedule,
                  "GPipe, 1F1B, Interleaved1F1B, ZBVZeroBubble or InterleavedZeroBubble")->capture_default_str();
  cmd->add_option("--virtual-stages", args->virtual_stages, "stages per rank of the interleaved schedules (default 2)");
  cmd->add_option("--trace", args->trace, "also write the schedule as a Chrome trace (JSON) to this file");
  cmd->add_flag("--actions", args->actions, "also print each rank's actions, transfers included");
  return [cmd, args]() -> int { return cmd->parsed() ? run_schedule(*args) : -1; };
}

}  // namespace troupe::cli
