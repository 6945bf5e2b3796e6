// A rank's shard file (rank<R>.safetensors: any safetensors reader opens it) and loading any
// layout of tensors back from a step's shards, checking sizes and checksums on the way.
#pragma once
#include <string>
#include <vector>

#include "checkpoint/checkpoint_metadata.h"
#include "checkpoint/host_snapshot.h"
#include "checkpoint/safetensors.h"

namespace troupe::checkpoint {

std::string shard_file_name(int rank);

// Writes the snapshot's tensors into `dir`, fsynced; returns the snapshot's metadata completed
// with this rank's file, byte ranges and checksums.
CheckpointMetadata write_shard(const HostSnapshot& snapshot, const std::string& dir);

// A piece of a tensor that the loading side needs.
struct WantedTensor {
  std::string name;
  std::vector<int64_t> global_shape;
  ShardBox box;
};

// Assembles each wanted piece (CPU, in the saved dtype) from the overlapping saved shards of the
// step in `step_dir`. Every error names the file and the tensor: missing tensor, shape
// mismatch, missing or truncated file, checksum mismatch, a piece not fully covered.
TensorMap read_tensors(const std::string& step_dir, const CheckpointMetadata& meta,
                       const std::vector<WantedTensor>& wanted);

// Every tensor of the step whole (export, info --verify).
TensorMap read_whole_tensors(const std::string& step_dir, const CheckpointMetadata& meta, const std::string& prefix = "");

}  // namespace troupe::checkpoint
