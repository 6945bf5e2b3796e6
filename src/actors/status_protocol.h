// Every actor answers `status_atom` with an actor_status (the live console asks for it).
#pragma once
#include <caf/all.hpp>

#include <cstdint>
#include <string>

namespace troupe::actors {

using status_atom = caf::atom_constant<caf::atom("status")>;

struct actor_status {
  std::string name;
  std::string state;       // "idle", "computing", "waiting-data", "stopping", "failed", ...
  int64_t step = 0;        // current step (or batches produced, for the loader)
  uint64_t mailbox = 0;    // messages waiting when last seen
  uint64_t handled = 0;    // messages handled so far
  std::string last_error;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, actor_status& x) {
  return f(caf::meta::type_name("actor_status"), x.name, x.state, x.step, x.mailbox, x.handled, x.last_error);
}

}  // namespace troupe::actors
