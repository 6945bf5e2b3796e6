// Everyone -> metrics sink, fire and forget; flush is a request so shutdown can wait for it.
#pragma once
#include <caf/all.hpp>

#include <string>

#include "actors/stage_protocol.h"

namespace troupe::actors {

using metrics_atom = caf::atom_constant<caf::atom("metrics")>;  // (metrics_atom, train::StepStats)
using log_atom = caf::atom_constant<caf::atom("log")>;          // (log_atom, std::string line)
// (validation_atom, int64_t step, double loss): a console line and a JSONL record with exp(loss)
using validation_atom = caf::atom_constant<caf::atom("validation")>;
using flush_atom = caf::atom_constant<caf::atom("flush")>;      // (flush_atom) -> bool
// (log_freq_atom, int64_t n): print every n-th step from now on (the inspection console's key)
using log_freq_atom = caf::atom_constant<caf::atom("log_freq")>;

}  // namespace troupe::actors
