#include "checkpoint/shard_file.h"

#include <torch/torch.h>

#include <algorithm>
#include <filesystem>
#include <memory>
#include <stdexcept>

#include "checkpoint/file_io.h"

namespace troupe::checkpoint {

std::string shard_file_name(int rank) { return "rank" + std::to_string(rank) + ".safetensors"; }

CheckpointMetadata write_shard(const HostSnapshot& snapshot, const std::string& dir) {
  auto meta = snapshot.meta;
  auto& rank = meta.ranks.at(0);
  rank.file = shard_file_name(rank.rank);
  TensorMap by_name;
  for (const auto& t : snapshot.tensors) by_name[t.name] = t.host;
  OutputFile out((std::filesystem::path(dir) / rank.file).string());
  const auto ranges = write_safetensors_to(out, by_name, {{"format", "pt"}});
  out.sync_and_close();
  rank.bytes = out.size();
  // The header: everything before the first tensor's bytes.
  rank.header_bytes = rank.bytes;
  for (const auto& [name, range] : ranges) rank.header_bytes = std::min<uint64_t>(rank.header_bytes, range.first);
  {
    const InputFile written((std::filesystem::path(dir) / rank.file).string());
    std::string header(rank.header_bytes, '\0');
    written.read_at(0, header.data(), header.size(), "the header");
    rank.header_xxh3 = xxh3_64(header.data(), header.size());
  }
  for (const auto& t : snapshot.tensors) {
    const auto [begin, end] = ranges.at(t.name);
    const auto where = rank.file + ": tensor '" + t.name + "'";
    auto& entry = meta.tensors[t.name];
    entry.dtype = dtype_name(t.host.scalar_type(), where);
    entry.global_shape = t.global_shape;
    entry.shards.push_back({rank.rank, rank.file, t.box, begin, end, xxh3_64(t.host.data_ptr(), end - begin)});
  }
  return meta;
}

namespace {

// Opens each shard file once and checks its size against the metadata before any read.
class ShardFiles {
 public:
  ShardFiles(std::string step_dir, const CheckpointMetadata& meta) : dir_(std::move(step_dir)), meta_(meta) {}

  const InputFile& open(const TensorShard& shard, const std::string& tensor) {
    auto& slot = files_[shard.file];
    if (slot) return *slot;
    const auto path = (std::filesystem::path(dir_) / shard.file).string();
    try {
      slot = std::make_unique<InputFile>(path);
    } catch (const std::exception& e) {
      throw std::runtime_error(std::string(e.what()) + " (needed for tensor '" + tensor + "')");
    }
    for (const auto& r : meta_.ranks) {
      if (r.file != shard.file) continue;
      if (r.bytes != slot->size())
        throw std::runtime_error(path + ": " + std::to_string(slot->size()) + " bytes, metadata.json says " +
                                 std::to_string(r.bytes) + " (truncated or replaced; found reading tensor '" + tensor +
                                 "')");
      if (r.header_bytes == 0) continue;  // written before headers were checksummed
      std::string header(r.header_bytes, '\0');
      slot->read_at(0, header.data(), header.size(), "the header");
      if (xxh3_64(header.data(), header.size()) != r.header_xxh3)
        throw std::runtime_error(path + ": header checksum mismatch (the safetensors header was changed; found reading "
                                        "tensor '" + tensor + "')");
    }
    return *slot;
  }

 private:
  std::string dir_;
  const CheckpointMetadata& meta_;
  std::map<std::string, std::unique_ptr<InputFile>> files_;
};

at::Tensor read_piece(const InputFile& file, const TensorShard& shard, const TensorEntry& entry,
                      const std::string& name) {
  const auto where = file.path() + ": tensor '" + name + "'";
  auto piece = torch::empty(shard.box.lengths, torch::TensorOptions().dtype(dtype_from_name(entry.dtype, where)));
  const uint64_t bytes = static_cast<uint64_t>(piece.numel()) * piece.element_size();
  if (shard.end - shard.begin != bytes)
    throw std::runtime_error(where + ": byte range of " + std::to_string(shard.end - shard.begin) +
                             " bytes for a piece needing " + std::to_string(bytes));
  if (shard.end > file.size())
    throw std::runtime_error(where + ": bytes up to " + std::to_string(shard.end) + " but the file has " +
                             std::to_string(file.size()) + " (truncated)");
  file.read_at(shard.begin, piece.data_ptr(), bytes, "tensor '" + name + "'");
  if (xxh3_64(piece.data_ptr(), bytes) != shard.xxh3)
    throw std::runtime_error(where + ": checksum mismatch (the file is corrupted)");
  return piece;
}

}  // namespace

TensorMap read_tensors(const std::string& step_dir, const CheckpointMetadata& meta,
                       const std::vector<WantedTensor>& wanted) {
  ShardFiles files(step_dir, meta);
  const auto meta_path = (std::filesystem::path(step_dir) / "metadata.json").string();
  TensorMap out;
  for (const auto& w : wanted) {
    auto it = meta.tensors.find(w.name);
    if (it == meta.tensors.end()) throw std::runtime_error(meta_path + ": no tensor '" + w.name + "' in the checkpoint");
    const auto& entry = it->second;
    if (entry.global_shape != w.global_shape)
      throw std::runtime_error(meta_path + ": tensor '" + w.name + "' has shape " + shape_text(entry.global_shape) +
                               ", the model needs " + shape_text(w.global_shape));
    auto dst = torch::empty(w.box.lengths, torch::TensorOptions().dtype(dtype_from_name(entry.dtype, meta_path)));
    int64_t covered = 0;
    for (const auto& shard : entry.shards) {
      const auto overlap = intersect(shard.box, w.box);
      if (!overlap) continue;
      const auto piece = read_piece(files.open(shard, w.name), shard, entry, w.name);
      copy_overlap(piece, shard.box, dst, w.box, *overlap);
      covered += overlap->numel();
    }
    // Saved shards never overlap, so the counts add up exactly when the piece is complete.
    if (covered != w.box.numel())
      throw std::runtime_error(meta_path + ": tensor '" + w.name + "': the saved shards cover " +
                               std::to_string(covered) + " of the " + std::to_string(w.box.numel()) +
                               " elements needed");
    out[w.name] = std::move(dst);
  }
  return out;
}

TensorMap read_whole_tensors(const std::string& step_dir, const CheckpointMetadata& meta, const std::string& prefix) {
  std::vector<WantedTensor> wanted;
  for (const auto& [name, entry] : meta.tensors)
    if (name.starts_with(prefix)) wanted.push_back({name, entry.global_shape, whole_box(entry.global_shape)});
  return read_tensors(step_dir, meta, wanted);
}

}  // namespace troupe::checkpoint
