// Stage <-> data loader. The stage grants credits; the loader answers each credit with one
// prefetched batch, so batches are ready before the step that needs them.
#pragma once
#include <caf/all.hpp>

#include <memory>

#include "actors/status_protocol.h"
#include "data/data_position.h"

namespace troupe::data { struct Batch; }

namespace troupe::actors {

using batch_handle = std::shared_ptr<const data::Batch>;

using credit_atom = caf::atom_constant<caf::atom("credit")>;  // stage -> loader: (credit_atom, int64_t n, caf::actor consumer)
using batch_atom = caf::atom_constant<caf::atom("batch")>;    // loader -> stage: (batch_atom, batch_handle)
using failure_atom = caf::atom_constant<caf::atom("failure")>;  // any -> supervisor: (failure_atom, std::string)
// stage -> loader, before its first credit when resuming: (seek_atom, data::DataPosition)
using seek_atom = caf::atom_constant<caf::atom("seek")>;

}  // namespace troupe::actors

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::actors::batch_handle)

namespace troupe::data {
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, DataPosition& x) {
  return f(caf::meta::type_name("data_position"), x.epoch, x.index, x.produced, x.file, x.offset, x.token);
}
}  // namespace troupe::data
