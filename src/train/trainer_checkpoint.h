// A Trainer's side of checkpoints: the host snapshot a stage takes at a step boundary, and the
// restore at start-up (resume from the newest committed step, a chosen step, or an initial
// checkpoint), honouring exclude_from_loading.
#pragma once
#include <memory>
#include <optional>
#include <string>

#include "checkpoint/host_snapshot.h"
#include "config/job_config.h"
#include "data/data_position.h"
#include "models/architecture.h"

namespace troupe::train {

class Trainer;
using checkpoint::HostSnapshot;
using checkpoint::SnapshotBuffers;

struct SnapshotRequest {
  int64_t step = 0;
  std::string tmp_dir;
  bool model_only = false;
  std::string dtype;  // model-only saves: "float32" | "bfloat16" | "float16"; empty keeps the training dtype
  int rank = 0;
  data::DataPosition consumed;  // after the last batch the step consumed
};

// "float32" | "bfloat16" | "float16" (checkpoint.export_dtype, export --dtype).
at::ScalarType export_dtype(const std::string& name);

// Copies the trainer's state to host memory (the part of a save that holds up training).
std::shared_ptr<HostSnapshot> snapshot_trainer(Trainer& trainer, const config::JobConfig& cfg,
                                               const SnapshotRequest& request, SnapshotBuffers& buffers);

struct Restored {
  int64_t step = 0;  // the last step done: training continues at step + 1
  std::optional<data::DataPosition> dataloader;  // where the loader continues; none: from the start
  std::string message;  // one line for the log; empty when nothing was loaded
};

// The step directory a job starting now loads (its newest committed step, checkpoint.load_step,
// or checkpoint.initial_load_path), or none.
std::optional<std::string> checkpoint_to_load(const config::JobConfig& cfg);

// Loads what the config asks for into `trainer` (and the generators); a fresh start when there
// is nothing to load. Throws naming the file and tensor on any problem with the checkpoint, and
// naming the first difference when it holds another model (family, dimension, or a tensor's
// name or shape) unless the model is not loaded (exclude_from_loading).
// `world`: the ranks of this job. A checkpoint of another number of (data-parallel) ranks
// reshards the model and optimizer; its data position carries over exactly for token shards
// (the windows consumed so far are the same for every rank), and its generators come from
// rank (rank mod saved ranks). Text datasets cannot move their position to another layout.
// Throws naming the first difference when the checkpoint a job starting now would load holds
// another model than `model` (its family, a dimension, or a tensor's name or shape) and the
// model is to be loaded. Run before any rank starts, so that nothing is written.
void check_checkpoint_model(const config::JobConfig& cfg, const models::Architecture& model);

Restored restore_trainer(Trainer& trainer, const config::JobConfig& cfg, int rank, int world);

// A token-shard position saved by a rank of `from` data-parallel ranks, for a rank of `to`:
// every rank consumed the same number of windows, so the global count is index x from.
data::DataPosition reshard_token_position(const data::DataPosition& saved, int from, int to, int64_t windows_per_batch);

}  // namespace troupe::train
