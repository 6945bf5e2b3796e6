#include <CLI/CLI.hpp>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstring>
#include <iostream>
#include <memory>

#include "cli/commands.h"
#include "cli/placement_options.h"
#include "config/job_config.h"
#include "runtime/exit_codes.h"
#include "runtime/failpoint.h"
#include "cli/run_training.h"

namespace troupe::cli {

namespace {

std::atomic<int> stop_requests{0};

// First signal: finish the running step, flush the metrics and exit 0. Second: leave now.
extern "C" void on_stop_signal(int sig) {
  if (stop_requests.fetch_add(1) >= 1) {
    constexpr char msg[] = "troupe: second signal, abandoning the running step\n";
    [[maybe_unused]] auto n = write(STDERR_FILENO, msg, sizeof msg - 1);
    _exit(runtime::exit_code::interrupted);
  }
  const char* msg = sig == SIGINT ? "troupe: SIGINT, stopping after the running step (again to abandon it)\n"
                                  : "troupe: SIGTERM, stopping after the running step (again to abandon it)\n";
  [[maybe_unused]] auto n = write(STDERR_FILENO, msg, std::strlen(msg));
}

void install_stop_handlers() {
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

struct TrainOptions {
  std::string config_path;
  PlacementFlags placement;
};

int run_train(const TrainOptions& opts, const std::vector<std::string>& extras) {
  config::JobConfig cfg;
  try {
    cfg = config::load_job_config(opts.config_path, config::parse_override_args(extras));
  } catch (const config::ConfigError& e) {
    std::cerr << "troupe: " << e.what() << '\n';
    return runtime::exit_code::bad_config;
  }
  for (const auto& warning : config::config_warnings(opts.config_path, cfg)) std::cerr << "troupe: warning: " << warning << '\n';
  runtime::NodePlacement placement;
  try {
    placement = opts.placement.resolve(cfg);
  } catch (const std::invalid_argument& e) {
    std::cerr << "troupe: " << e.what() << '\n';
    return runtime::exit_code::bad_config;
  }
  install_stop_handlers();
  runtime::install_failpoint_from_environment();
  cli::RunHooks hooks;
  hooks.stop_requests = &stop_requests;
  try {
    return cli::run_training(cfg, hooks, placement).exit_code;  // it printed the outcome
  } catch (const config::ConfigError& e) {
    std::cerr << "troupe: " << e.what() << '\n';
    return runtime::exit_code::bad_config;
  } catch (const std::exception& e) {
    std::cerr << "troupe: " << e.what() << '\n';
    return runtime::exit_code::failed;
  }
}

}  // namespace

Action add_train_command(CLI::App& app) {
  auto opts = std::make_shared<TrainOptions>();
  auto* cmd = app.add_subcommand("train", "Pretrain a model from a TOML config");
  cmd->add_option("--config", opts->config_path, "TOML job config (torchtitan's sections and keys)");
  add_placement_options(*cmd, opts->placement);  // opts lives as long as the returned action
  cmd->footer(
      "Any config key can be overridden: --section.key VALUE or --section.key=VALUE\n"
      "(e.g. --training.steps 20 --optimizer.lr=3e-4). Exit codes: 0 done or stopped by a\n"
      "signal after a step, 1 failure, 2 bad config, 3 loss diverged, 130 second signal.");
  cmd->allow_extras();
  return [cmd, opts]() -> int {
    if (!cmd->parsed()) return -1;
    return run_train(*opts, cmd->remaining());
  };
}

}  // namespace troupe::cli
