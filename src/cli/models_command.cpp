// `troupe models`: every registered family and flavor with its size.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <iostream>
#include <memory>

#include "cli/commands.h"
#include "models/registry.h"

namespace troupe::cli {

namespace {

std::string billions(int64_t n) {
  char buf[32];
  std::snprintf(buf, sizeof buf, n >= 1'000'000'000 ? "%.2fB" : "%.1fM", n >= 1'000'000'000 ? n / 1e9 : n / 1e6);
  return buf;
}

void print_models(bool dims) {
  std::printf("%-8s %-20s %16s %16s  %s\n", "model", "flavor", "parameters", "non-embedding", dims ? "dimensions" : "");
  for (const auto& spec : models::model_specs()) {
    for (const auto& flavor : spec.flavors) {
      const auto m = spec.configure(flavor, {});
      std::printf("%-8s %-20s %16lld %16lld  %s", spec.name.c_str(), flavor.c_str(), static_cast<long long>(m->num_params()),
                  static_cast<long long>(m->num_non_embedding_params()), billions(m->num_params()).c_str());
      if (dims)
        for (const auto& [key, value] : m->dimensions()) std::printf(" %s=%s", key.c_str(), value.c_str());
      std::printf("\n");
    }
  }
  std::printf("Any dimension can be set over a flavor as a [model] key or --model.KEY VALUE (e.g. --model.n_layers 16).\n");
}

}  // namespace

Action add_models_command(CLI::App& app) {
  auto dims = std::make_shared<bool>(false);
  auto* cmd = app.add_subcommand("models", "List every model family and flavor with its parameter count");
  cmd->add_flag("--dimensions", *dims, "also every flavor's dimensions (its [model] keys)");
  return [cmd, dims]() -> int {
    if (!cmd->parsed()) return -1;
    print_models(*dims);
    return 0;
  };
}

}  // namespace troupe::cli
