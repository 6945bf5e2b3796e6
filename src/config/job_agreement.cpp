#include "config/job_agreement.h"

#include <algorithm>
#include <map>
#include <string_view>

namespace troupe::config {

namespace {

constexpr std::string_view kNodeLocal[] = {
    "job.dump_folder",        "job.description",          "model.tokenizer_path",     "training.dataset_path",
    "validation.dataset_path", "checkpoint.folder",       "checkpoint.initial_load_path",
    "profiling.save_traces_folder", "comm.save_traces_folder", "comm.save_traces_file_prefix",
    "comm.init_timeout_seconds", "inspect.enable",        "inspect.host",             "inspect.port",
    "inspect.token",
};

}  // namespace

KeyValues shared_key_values(const JobConfig& cfg) {
  auto all = key_values(cfg);
  std::erase_if(all, [](const auto& kv) { return std::ranges::find(kNodeLocal, kv.first) != std::end(kNodeLocal); });
  return all;
}

std::string disagreement(const KeyValues& a, const std::string& a_name, const KeyValues& b, const std::string& b_name) {
  const std::map<std::string, std::string> left(a.begin(), a.end()), right(b.begin(), b.end());
  std::vector<std::string> keys;  // in a's order, then b's keys a lacks
  for (const auto& [k, v] : a)
    if (auto it = right.find(k); it == right.end() || it->second != v) keys.push_back(k);
  for (const auto& [k, v] : b)
    if (!left.contains(k)) keys.push_back(k);
  if (keys.empty()) return {};
  auto value = [](const std::map<std::string, std::string>& side, const std::string& k) {
    auto it = side.find(k);
    return it == side.end() ? std::string("(not set)") : it->second;
  };
  constexpr size_t kShown = 8;
  std::string out;
  for (size_t i = 0; i < std::min(keys.size(), kShown); ++i) {
    const auto& k = keys[i];
    out += (i ? "; " : "") + k + " = " + value(left, k) + " on " + a_name + ", " + value(right, k) + " on " + b_name;
  }
  if (keys.size() > kShown) out += "; and " + std::to_string(keys.size() - kShown) + " more";
  return out;
}

std::vector<std::string> flatten(const KeyValues& kv) {
  std::vector<std::string> flat;
  flat.reserve(kv.size() * 2);
  for (const auto& [k, v] : kv) {
    flat.push_back(k);
    flat.push_back(v);
  }
  return flat;
}

KeyValues unflatten(const std::vector<std::string>& flat) {
  KeyValues kv;
  for (size_t i = 0; i + 1 < flat.size(); i += 2) kv.emplace_back(flat[i], flat[i + 1]);
  return kv;
}

}  // namespace troupe::config
