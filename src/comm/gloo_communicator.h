// The Gloo engine (CPU tensors), on the Gloo inside libtorch (c10d's ProcessGroupGloo).
#pragma once
#include "comm/communicator.h"
#include "comm/rendezvous.h"

namespace troupe::comm {

// Collective over `size` ranks: every member calls this with the same `group` name (unique per
// job) and its rank in the group; returns once all have connected. `recorder` (may be null)
// records each operation.
CommunicatorPtr make_gloo_communicator(Rendezvous& rdzv, const std::string& group, int rank, int size,
                                       std::shared_ptr<FlightRecorder> recorder = nullptr);

}  // namespace troupe::comm
