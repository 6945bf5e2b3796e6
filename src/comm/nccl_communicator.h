// The NCCL engine (CUDA tensors). Operations run on the communicator's own stream after the
// caller's current stream has produced their inputs; Work::wait() makes the caller's stream wait
// for them, so overlap comes from streams and events, never from the host blocking.
#pragma once
#include "comm/communicator.h"
#include "comm/rendezvous.h"

namespace troupe::comm {

// True in builds with CUDA (TROUPE_CUDA); the factory throws otherwise.
bool nccl_available();

// Collective over `size` ranks of the group, each on its own CUDA device (`device`); rank 0
// creates the NCCL unique id and publishes it through the rendezvous. `recorder` (may be null)
// records each operation; its watchdog marks them finished.
CommunicatorPtr make_nccl_communicator(Rendezvous& rdzv, const std::string& group, int rank, int size, int device,
                                       std::shared_ptr<FlightRecorder> recorder = nullptr);

}  // namespace troupe::comm
