// A comm::Rendezvous whose store is node 0's key-value store actor, reached over CAF (locally or
// through the middleman's proxy): the job's control plane carries the communicators'
// connection details, the NCCL unique id included.
#pragma once
#include <caf/fwd.hpp>

#include <chrono>
#include <memory>
#include <string>

#include "comm/rendezvous.h"

namespace troupe::actors {

// `local_host`: where this node's Gloo listens ("" for the host name's address).
std::shared_ptr<comm::Rendezvous> make_caf_rendezvous(caf::actor_system& sys, caf::actor kv, std::chrono::milliseconds timeout,
                                                std::string local_host);

}  // namespace troupe::actors
