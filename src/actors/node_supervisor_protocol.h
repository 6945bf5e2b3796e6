// Anyone -> node supervisor. The supervisor also receives the coordinator's done_atom and
// every actor's failure_atom (see coordinator_protocol.h and data_loader_protocol.h).
#pragma once
#include <caf/all.hpp>

#include <vector>

#include "actors/coordinator_protocol.h"
#include "actors/data_loader_protocol.h"
#include "actors/status_protocol.h"

namespace troupe::actors {

using children_atom = caf::atom_constant<caf::atom("children")>;  // (children_atom) -> std::vector<caf::actor>

}  // namespace troupe::actors
