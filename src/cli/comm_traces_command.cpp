#include <CLI/CLI.hpp>

#include <iostream>
#include <memory>

#include "cli/commands.h"
#include "comm/flight_record_report.h"

namespace troupe::cli {

Action add_comm_traces_command(CLI::App& app) {
  auto folder = std::make_shared<std::string>();
  auto* cmd = app.add_subcommand("comm-traces",
                                 "Read a failed job's collective records side by side: how far each rank got in "
                                 "each group, who the others wait for, where ranks issued different collectives");
  cmd->add_option("folder", *folder, "the records' folder (<dump_folder>/comm_traces; every node's files)")->required();
  return [cmd, folder]() -> int {
    if (!cmd->parsed()) return -1;
    try {
      std::cout << comm::flight_record_report(*folder);
      return 0;
    } catch (const std::exception& e) {
      std::cerr << "troupe comm-traces: " << e.what() << '\n';
      return 2;
    }
  };
}

}  // namespace troupe::cli
