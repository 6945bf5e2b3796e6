// Subcommands of the `troupe` binary. Each adds itself to the CLI11 app and runs when chosen;
// the returned int is the process exit code.
#pragma once
#include <functional>

namespace CLI { class App; }

namespace troupe::cli {

// A subcommand's action: called after parsing when the subcommand was chosen.
using Action = std::function<int()>;

Action add_train_command(CLI::App& app);
Action add_tokenizer_command(CLI::App& app);
Action add_checkpoint_command(CLI::App& app);
Action add_data_command(CLI::App& app);
Action add_inspect_command(CLI::App& app);
Action add_schedule_command(CLI::App& app);
Action add_comm_traces_command(CLI::App& app);
Action add_models_command(CLI::App& app);

}  // namespace troupe::cli
