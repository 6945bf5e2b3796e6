// A whole step written and committed in one call: the synchronous path (import, seeds from
// tools, the benchmark's baseline), built of the same pieces the writer actors use.
#pragma once
#include <string>

#include "checkpoint/host_snapshot.h"

namespace troupe::checkpoint {

// Writes `snapshot` (one rank's, which must be all ranks') under a temporary name in `folder`
// and commits it; a failure removes the temporary directory and leaves `folder` as it was.
// Returns the committed step directory.
std::string write_step(const std::string& folder, HostSnapshot snapshot);

}  // namespace troupe::checkpoint
