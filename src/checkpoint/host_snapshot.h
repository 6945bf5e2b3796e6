// A rank's training state copied to host memory at a step boundary: the one part of a
// checkpoint that holds up training. The writer actor owns it afterwards and writes it while
// training goes on.
#pragma once
#include <ATen/core/Tensor.h>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "checkpoint/checkpoint_metadata.h"
#include "checkpoint/shard_box.h"

namespace troupe::checkpoint {

// A tensor of the running job (on its device) and where it sits in the global tensor.
struct LiveTensor {
  std::string name;
  at::Tensor tensor;
  std::vector<int64_t> global_shape;
  ShardBox box;
};

struct SnapshotTensor {
  std::string name;
  at::Tensor host;  // contiguous, CPU
  std::vector<int64_t> global_shape;
  ShardBox box;
};

struct HostSnapshot {
  CheckpointMetadata meta;  // this rank's state; `tensors` and the rank's file are filled in when written
  std::string tmp_dir;      // where this step's files go until the commit
  std::vector<SnapshotTensor> tensors;
  double blocked_seconds = 0;  // how long taking it held up training
};

// Host buffers for snapshots. Reused ones (async, async_with_pinned_mem) are allocated once and
// kept between saves, so a save's blocking part is a copy, not a copy plus the page faults of
// new memory; with `pin` (async_with_pinned_mem) they are pinned when the source is on a GPU (the
// copy is a DMA at full bus speed). Fresh ones (disabled: the save blocks anyway) are pageable
// and allocated per snapshot.
class SnapshotBuffers {
 public:
  explicit SnapshotBuffers(bool reuse, bool pin = false) : reuse_(reuse), pin_(pin) {}
  // Copies `live` to host (converted to `dtype` if given) and waits for the copies to land.
  std::vector<SnapshotTensor> copy_to_host(const std::vector<LiveTensor>& live, std::optional<at::ScalarType> dtype);
  // Buffers of a snapshot still being written are never reused: remember which one holds them.
  void lend_to(const std::shared_ptr<const HostSnapshot>& snapshot) { in_flight_ = snapshot; }

 private:
  at::Tensor buffer_for(const std::string& name, const at::Tensor& src, at::ScalarType dtype);
  bool reuse_, pin_;
  std::map<std::string, at::Tensor> buffers_;
  std::weak_ptr<const HostSnapshot> in_flight_;
};

}  // namespace troupe::checkpoint
