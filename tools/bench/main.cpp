// troupe_bench: benchmarks that print tables (docs/perf/ records their results).
#include <CLI/CLI.hpp>

#include <iostream>

#include "bench/benchmarks.h"

int main(int argc, char** argv) {
  using namespace troupe;
  CLI::App app{"troupe_bench: Troupe benchmarks"};
  app.require_subcommand(1);
  std::string config_path = "configs/llama3_debug.toml";
  int rounds = 3;
  auto* overhead = app.add_subcommand("actor-overhead", "tokens/s through the actors vs a plain loop");
  overhead->add_option("--config", config_path, "job config");
  overhead->add_option("--rounds", rounds, "alternating rounds of each path");
  overhead->allow_extras();
  overhead->footer("Config keys can be overridden as in `troupe train` (e.g. --training.steps 20).");
  CLI11_PARSE(app, argc, argv);
  try {
    const auto cfg = config::load_job_config(config_path, config::parse_override_args(overhead->remaining()));
    return bench::actor_overhead(cfg, rounds);
  } catch (const std::exception& e) {
    std::cerr << "troupe_bench: " << e.what() << '\n';
    return 1;
  }
}
