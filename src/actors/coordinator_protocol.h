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
// Controls (the inspection endpoint, through the supervisor), all taking effect at a step boundary:
using pause_atom = caf::atom_constant<caf::atom("pause")>;        // (pause_atom): hold before the next step
using resume_atom = caf::atom_constant<caf::atom("resume")>;      // (resume_atom)
using ckpt_now_atom = caf::atom_constant<caf::atom("ckpt_now")>;  // (ckpt_now_atom): save after the running step

}  // namespace troupe::actors
