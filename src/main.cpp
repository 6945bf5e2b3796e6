#include <CLI/CLI.hpp>

#include <iostream>
#include <vector>

#include "cli/commands.h"
#include "runtime/crash_report.h"

int main(int argc, char** argv) {
  troupe::runtime::install_crash_report();
  CLI::App app{"troupe: LLM pretraining built of actors"};
  app.require_subcommand(1);
  std::vector<troupe::cli::Action> actions{
      troupe::cli::add_train_command(app),
      troupe::cli::add_tokenizer_command(app),
      troupe::cli::add_checkpoint_command(app),
      troupe::cli::add_data_command(app),
      troupe::cli::add_inspect_command(app),
      troupe::cli::add_schedule_command(app),
      troupe::cli::add_comm_traces_command(app),
      troupe::cli::add_models_command(app),
  };
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  for (auto& act : actions)
    if (act) {
      int rc = act();
      if (rc >= 0) return rc;
    }
  return 0;
}
