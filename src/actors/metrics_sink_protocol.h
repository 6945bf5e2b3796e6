// Everyone -> metrics sink, fire and forget; flush is a request so shutdown can wait for it.
#pragma once
#include <caf/all.hpp>

#include <string>

#include "actors/stage_protocol.h"

namespace troupe::actors {

using metrics_atom = caf::atom_constant<caf::atom("metrics")>;  // (metrics_atom, train::StepStats)
using log_atom = caf::atom_constant<caf::atom("log")>;          // (log_atom, std::string line)
using flush_atom = caf::atom_constant<caf::atom("flush")>;      // (flush_atom) -> bool

}  // namespace troupe::actors
