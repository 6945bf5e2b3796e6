#include "checkpoint/checkpoint_metadata.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <stdexcept>

#include "checkpoint/file_io.h"

namespace troupe::checkpoint {

namespace {

using nlohmann::json;

json to_json(const CheckpointMetadata& m) {
  json tensors = json::object();
  for (const auto& [name, t] : m.tensors) {
    json shards = json::array();
    for (const auto& s : t.shards)
      shards.push_back({{"rank", s.rank},
                        {"file", s.file},
                        {"offsets", s.box.offsets},
                        {"lengths", s.box.lengths},
                        {"byte_range", {s.begin, s.end}},
                        {"xxh3", to_hex(s.xxh3)}});
    tensors[name] = {{"dtype", t.dtype}, {"global_shape", t.global_shape}, {"shards", shards}};
  }
  json ranks = json::array();
  for (const auto& r : m.ranks) {
    json entry = {{"rank", r.rank}, {"file", r.file}, {"bytes", r.bytes}, {"rng", r.rng}};
    if (r.header_bytes > 0) entry["header"] = {{"bytes", r.header_bytes}, {"xxh3", to_hex(r.header_xxh3)}};
    if (const auto& d = r.dataloader)
      entry["dataloader"] = {{"epoch", d->epoch}, {"index", d->index},   {"produced", d->produced},
                             {"file", d->file},   {"offset", d->offset}, {"token", d->token}};
    ranks.push_back(std::move(entry));
  }
  json config = json::object();
  for (const auto& [key, value] : m.config) config[key] = value;
  json model = {{"name", m.model.name}, {"flavor", m.model.flavor}, {"vocab_size", m.model.vocab_size},
                {"max_seq_len", m.model.max_seq_len}};
  if (!m.model.dimensions.empty()) {
    model["dimensions"] = json::object();
    for (const auto& [key, value] : m.model.dimensions) model["dimensions"][key] = value;
  }
  return {{"format_version", m.format_version},
          {"step", m.step},
          {"model_only", m.model_only},
          {"lr_scheduler", {{"step", m.lr_schedule_step}}},
          {"model", model},
          {"ranks", ranks},
          {"tensors", tensors},
          {"config", config}};
}

// Field access that names what is missing or malformed.
class Reader {
 public:
  explicit Reader(std::string where) : where_(std::move(where)) {}

  template <class T>
  T get(const json& j, const char* key, const std::string& context) const {
    if (!j.is_object() || !j.contains(key)) fail(context + ": '" + key + "' is missing");
    try {
      return j.at(key).get<T>();
    } catch (const json::exception&) {
      fail(context + ": '" + key + "' has the wrong type");
    }
  }

  [[noreturn]] void fail(const std::string& what) const { throw std::runtime_error(where_ + ": " + what); }

 private:
  std::string where_;
};

uint64_t parse_hex(const Reader& r, const std::string& text, const std::string& context) {
  if (text.size() != 16 || text.find_first_not_of("0123456789abcdef") != std::string::npos)
    r.fail(context + ": xxh3 '" + text + "' is not 16 hex digits");
  return std::stoull(text, nullptr, 16);
}

TensorEntry tensor_from(const Reader& r, const json& j, const std::string& name) {
  const auto ctx = "tensor '" + name + "'";
  TensorEntry t;
  t.dtype = r.get<std::string>(j, "dtype", ctx);
  t.global_shape = r.get<std::vector<int64_t>>(j, "global_shape", ctx);
  const auto shards = r.get<json>(j, "shards", ctx);
  for (const auto& s : shards) {
    TensorShard shard;
    shard.rank = r.get<int>(s, "rank", ctx);
    shard.file = r.get<std::string>(s, "file", ctx);
    shard.box = {r.get<std::vector<int64_t>>(s, "offsets", ctx), r.get<std::vector<int64_t>>(s, "lengths", ctx)};
    const auto range = r.get<std::vector<uint64_t>>(s, "byte_range", ctx);
    if (range.size() != 2 || range[0] > range[1]) r.fail(ctx + ": byte_range must be [begin, end]");
    shard.begin = range[0];
    shard.end = range[1];
    shard.xxh3 = parse_hex(r, r.get<std::string>(s, "xxh3", ctx), ctx);
    if (!fits(shard.box, t.global_shape))
      r.fail(ctx + ": rank " + std::to_string(shard.rank) + "'s box lies outside the global shape " +
             shape_text(t.global_shape));
    t.shards.push_back(std::move(shard));
  }
  return t;
}

RankEntry rank_from(const Reader& r, const json& j) {
  RankEntry e;
  e.rank = r.get<int>(j, "rank", "ranks");
  const auto ctx = "rank " + std::to_string(e.rank);
  e.file = r.get<std::string>(j, "file", ctx);
  e.bytes = r.get<uint64_t>(j, "bytes", ctx);
  if (j.contains("header")) {
    const auto& h = j["header"];
    e.header_bytes = r.get<uint64_t>(h, "bytes", ctx + " header");
    e.header_xxh3 = std::stoull(r.get<std::string>(h, "xxh3", ctx + " header"), nullptr, 16);
  }
  e.rng = r.get<std::map<std::string, std::string>>(j, "rng", ctx);
  if (j.contains("dataloader")) {
    const auto& d = j["dataloader"];
    const auto field = [&](const char* key) { return r.get<int64_t>(d, key, ctx + " dataloader"); };
    e.dataloader = data::DataPosition{field("epoch"), field("index"), field("produced"),
                                      field("file"),  field("offset"), field("token")};
  }
  return e;
}

}  // namespace

std::string shape_text(const std::vector<int64_t>& shape) { return json(shape).dump(); }

// metadata.json carries the XXH3-64 of its own text without that field: a changed byte anywhere
// in it is found on reading (files written before it was recorded have none).
std::string to_json_text(const CheckpointMetadata& meta) {
  auto j = to_json(meta);
  const auto body = j.dump(1);
  j["checksum"] = to_hex(xxh3_64(body.data(), body.size()));
  return j.dump(1);
}

CheckpointMetadata from_json_text(const std::string& text, const std::string& where) {
  const Reader r(where);
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    r.fail(std::string("not valid JSON (") + e.what() + ")");
  }
  CheckpointMetadata m;
  m.format_version = r.get<int>(j, "format_version", "top level");
  if (m.format_version != kFormatVersion)
    r.fail("format version " + std::to_string(m.format_version) + ", this troupe reads version " +
           std::to_string(kFormatVersion));
  if (j.is_object() && j.contains("checksum")) {
    auto body = j;
    body.erase("checksum");
    const auto text_without = body.dump(1);
    const auto want = j["checksum"].is_string() ? j["checksum"].get<std::string>() : std::string();
    if (to_hex(xxh3_64(text_without.data(), text_without.size())) != want)
      r.fail("checksum mismatch: the file was changed after it was written");
  }
  m.step = r.get<int64_t>(j, "step", "top level");
  m.model_only = r.get<bool>(j, "model_only", "top level");
  m.lr_schedule_step = r.get<int64_t>(r.get<json>(j, "lr_scheduler", "top level"), "step", "lr_scheduler");
  const auto model = r.get<json>(j, "model", "top level");
  m.model = {r.get<std::string>(model, "name", "model"), r.get<std::string>(model, "flavor", "model"),
             r.get<int64_t>(model, "vocab_size", "model"), r.get<int64_t>(model, "max_seq_len", "model"), {}};
  if (model.contains("dimensions"))
    for (const auto& [key, value] : r.get<std::map<std::string, std::string>>(model, "dimensions", "model"))
      m.model.dimensions.emplace_back(key, value);
  // Named locals: items() of a temporary would dangle inside the loop.
  const auto config = r.get<json>(j, "config", "top level");
  for (const auto& [key, value] : config.items())
    m.config.emplace_back(key, value.is_string() ? value.get<std::string>() : value.dump());
  const auto tensors = r.get<json>(j, "tensors", "top level");
  for (const auto& [name, t] : tensors.items()) m.tensors[name] = tensor_from(r, t, name);
  const auto ranks = r.get<json>(j, "ranks", "top level");
  for (const auto& rank : ranks) m.ranks.push_back(rank_from(r, rank));
  return m;
}

CheckpointMetadata merge_ranks(std::vector<CheckpointMetadata> per_rank) {
  if (per_rank.empty()) throw std::invalid_argument("merge_ranks: no rank wrote anything");
  std::sort(per_rank.begin(), per_rank.end(),
            [](const auto& a, const auto& b) { return a.ranks.at(0).rank < b.ranks.at(0).rank; });
  CheckpointMetadata out = per_rank.front();
  for (size_t i = 1; i < per_rank.size(); ++i) {
    const auto& m = per_rank[i];
    if (m.step != out.step) throw std::runtime_error("ranks wrote different steps: " + std::to_string(m.step) +
                                                     " and " + std::to_string(out.step));
    out.ranks.insert(out.ranks.end(), m.ranks.begin(), m.ranks.end());
    for (const auto& [name, t] : m.tensors) {
      auto [it, fresh] = out.tensors.emplace(name, t);
      if (fresh) continue;
      if (it->second.global_shape != t.global_shape || it->second.dtype != t.dtype)
        throw std::runtime_error("tensor '" + name + "': ranks disagree on its global shape or dtype");
      it->second.shards.insert(it->second.shards.end(), t.shards.begin(), t.shards.end());
    }
  }
  return out;
}

}  // namespace troupe::checkpoint
