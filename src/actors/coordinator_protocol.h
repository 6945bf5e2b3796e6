// Supervisor <-> coordinator: the step clock starts on `start`, a `stop` (signal) ends it after
// the running step, and `done` reports how the job ended.
#pragma once
#include <caf/all.hpp>

#include <string>
#include <vector>

#include "actors/stage_protocol.h"

namespace troupe::actors {

using start_atom = caf::atom_constant<caf::atom("start")>;  // (start_atom)
using stop_atom = caf::atom_constant<caf::atom("stop")>;    // (stop_atom, std::string why)
using done_atom = caf::atom_constant<caf::atom("done")>;    // (done_atom, int exit_code, std::string message, std::vector<train::StepStats>)

}  // namespace troupe::actors
