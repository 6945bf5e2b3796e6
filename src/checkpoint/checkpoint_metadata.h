// metadata.json of a checkpoint step: what was saved, by which rank, where each byte lies, and
// the training state that is not a tensor. Each rank's writer describes its own shard in this
// form; the commit merges them into the step's metadata.json.
#pragma once
#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "checkpoint/shard_box.h"
#include "data/data_position.h"

namespace troupe::checkpoint {

// Bumped on any change a reader of the previous version would misread.
inline constexpr int kFormatVersion = 1;

// One rank's piece of one tensor.
struct TensorShard {
  int rank = 0;
  std::string file;     // relative to the step directory
  ShardBox box;         // where the piece sits in the global tensor
  uint64_t begin = 0;   // byte range of the piece in `file`
  uint64_t end = 0;
  uint64_t xxh3 = 0;    // XXH3-64 of those bytes
};

struct TensorEntry {
  std::string dtype;  // safetensors name: F32, BF16, I64, ...
  std::vector<int64_t> global_shape;
  std::vector<TensorShard> shards;
};

// What one rank wrote besides tensors: its file and its own state.
struct RankEntry {
  int rank = 0;
  std::string file;
  uint64_t bytes = 0;  // size of `file`: a shorter file is truncated
  std::optional<data::DataPosition> dataloader;
  std::map<std::string, std::string> rng;  // generator ("cpu", "cuda:0") -> state bytes in hex
  // XXH3-64 of the file's safetensors header (its length and JSON: every byte before the first
  // tensor), so that a flipped byte anywhere in the file is found; 0 in older checkpoints.
  uint64_t header_xxh3 = 0;
  uint64_t header_bytes = 0;
};

struct ModelEntry {
  std::string name;  // the family
  std::string flavor;  // empty when the model was described by its dimensions alone (a seed)
  int64_t vocab_size = 0;
  int64_t max_seq_len = 0;
  // Every dimension of the family ("n_layers" = "16"): the exact architecture. Empty in
  // checkpoints written before they were recorded, whose flavor and vocabulary say it.
  std::vector<std::pair<std::string, std::string>> dimensions;
};

struct CheckpointMetadata {
  int format_version = kFormatVersion;
  int64_t step = 0;
  bool model_only = false;
  int64_t lr_schedule_step = 0;  // the schedule's own step count (differs from `step` after a reset)
  ModelEntry model;
  std::vector<std::pair<std::string, std::string>> config;  // every key of the job, as TOML text
  std::map<std::string, TensorEntry> tensors;
  std::vector<RankEntry> ranks;
};

std::string to_json_text(const CheckpointMetadata& meta);
// `where` names the source in errors (a file path, or "rank 1's shard record").
CheckpointMetadata from_json_text(const std::string& text, const std::string& where);

// One metadata from every rank's own: tensors' shards and ranks joined, the rest from rank 0.
CheckpointMetadata merge_ranks(std::vector<CheckpointMetadata> per_rank);

// "[4, 256]"
std::string shape_text(const std::vector<int64_t>& shape);

}  // namespace troupe::checkpoint
