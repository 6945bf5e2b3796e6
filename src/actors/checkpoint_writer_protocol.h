// The checkpoint conversation. The coordinator decides when; the stage copies its state to
// host memory (the only part that holds up training) and hands the snapshot to its rank's
// writer; each writer writes and fsyncs its shard and tells the coordinator; once every rank
// has, the coordinator asks rank 0's writer to commit the step (metadata.json, one rename).
#pragma once
#include <caf/all.hpp>

#include <memory>
#include <string>
#include <vector>

namespace troupe::checkpoint { struct HostSnapshot; }

namespace troupe::actors {

using snapshot_handle = std::shared_ptr<const checkpoint::HostSnapshot>;

// coordinator -> stage, once at start: (restored_atom) -> (int64_t step, std::string message)
// The step the stage restored from a checkpoint (0: fresh start), and a log line.
using restored_atom = caf::atom_constant<caf::atom("restored")>;
// coordinator -> stage, at a step boundary:
// (snapshot_atom, int64_t step, std::string tmp_dir, bool model_only, std::string dtype, caf::actor writer)
//   -> double blocked_seconds
using snapshot_atom = caf::atom_constant<caf::atom("snapshot")>;
// stage -> writer: (write_atom, snapshot_handle, caf::actor coordinator)
using write_atom = caf::atom_constant<caf::atom("write")>;
// writer -> coordinator: (written_atom, int64_t step, std::string shard_record, std::string error)
// shard_record: this rank's metadata as JSON; error: empty on success.
using written_atom = caf::atom_constant<caf::atom("written")>;
// coordinator -> rank 0's writer:
// (commit_atom, int64_t step, std::string tmp_dir, std::vector<std::string> shard_records) -> std::string summary
using commit_atom = caf::atom_constant<caf::atom("commit")>;

}  // namespace troupe::actors

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::actors::snapshot_handle)
