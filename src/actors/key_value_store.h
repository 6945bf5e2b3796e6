// Key-value store actor: node 0 hosts it for the whole job; every rank's communicators rendezvous
// through it (comm/caf_store.h). A get for a key not yet set is answered when the key arrives.
#pragma once
#include <caf/fwd.hpp>

namespace troupe::actors {

caf::actor spawn_key_value_store(caf::actor_system& sys);

}  // namespace troupe::actors
