#include "checkpoint/checkpoint_folder.h"

#include <stdio.h>  // renameat2
#include <fcntl.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <filesystem>
#include <random>
#include <stdexcept>

#include "checkpoint/file_io.h"
#include "runtime/remove_tree.h"

namespace troupe::checkpoint {

namespace fs = std::filesystem;

namespace {

constexpr std::string_view kStepPrefix = "step-";
constexpr std::string_view kTmpMarker = ".tmp-";

// The step of a committed directory name ("step-12"), if it is one.
std::optional<int64_t> committed_step(std::string_view name) {
  if (!name.starts_with(kStepPrefix)) return std::nullopt;
  const auto digits = name.substr(kStepPrefix.size());
  int64_t step = -1;
  auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), step);
  if (ec != std::errc() || end != digits.data() + digits.size() || step < 0) return std::nullopt;
  return step;
}

void rename_or_fail(const std::string& from, const std::string& to, unsigned flags) {
  if (::renameat2(AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(), flags) != 0)
    throw std::runtime_error("cannot rename " + from + " to " + to + ": " + std::strerror(errno));
}

}  // namespace

std::string checkpoint_folder(const config::JobConfig& cfg) {
  return (fs::path(cfg.job.dump_folder) / cfg.checkpoint.folder).string();
}

std::string step_dir_name(int64_t step) { return std::string(kStepPrefix) + std::to_string(step); }

std::string new_tmp_dir(const std::string& folder, int64_t step) {
  std::random_device rd;
  return (fs::path(folder) / (step_dir_name(step) + std::string(kTmpMarker) + to_hex((uint64_t{rd()} << 32) | rd())))
      .string();
}

std::vector<int64_t> committed_steps(const std::string& folder) {
  std::vector<int64_t> steps;
  std::error_code ec;
  if (!fs::is_directory(folder, ec)) return steps;
  for (const auto& entry : fs::directory_iterator(folder)) {
    const auto step = committed_step(entry.path().filename().string());
    if (step && entry.is_directory()) steps.push_back(*step);
  }
  std::sort(steps.begin(), steps.end());
  return steps;
}

std::string resolve_step_dir(const std::string& path, std::optional<int64_t> step) {
  if (committed_step(fs::path(path).filename().string())) {
    if (!fs::is_directory(path)) throw std::runtime_error(path + ": no such checkpoint step");
    return path;
  }
  const auto steps = committed_steps(path);
  if (steps.empty()) throw std::runtime_error(path + ": no committed checkpoint (no step-N directory)");
  if (!step) return (fs::path(path) / step_dir_name(steps.back())).string();
  if (!std::binary_search(steps.begin(), steps.end(), *step))
    throw std::runtime_error(path + ": no committed step " + std::to_string(*step) + " (newest is " +
                             std::to_string(steps.back()) + ")");
  return (fs::path(path) / step_dir_name(*step)).string();
}

CheckpointMetadata read_metadata(const std::string& step_dir) {
  const auto path = (fs::path(step_dir) / "metadata.json").string();
  return from_json_text(read_file(path), path);
}

std::string commit_step(const std::string& folder, const std::string& tmp_dir, const CheckpointMetadata& meta) {
  write_file_durably((fs::path(tmp_dir) / "metadata.json").string(), to_json_text(meta));
  sync_directory(tmp_dir);
  const auto target = (fs::path(folder) / step_dir_name(meta.step)).string();
  std::error_code ec;
  if (fs::exists(target, ec)) {
    // A step saved again (a run resumed from an older step): swap both in one step, so that a
    // crash leaves one complete step-N either way, then drop the old one.
    rename_or_fail(tmp_dir, target, RENAME_EXCHANGE);
    sync_directory(folder);
    runtime::remove_tree(tmp_dir);
  } else {
    rename_or_fail(tmp_dir, target, RENAME_NOREPLACE);
  }
  sync_directory(folder);
  return target;
}

std::vector<int64_t> prune_committed(const std::string& folder, int64_t keep) {
  auto steps = committed_steps(folder);
  if (keep <= 0 || static_cast<int64_t>(steps.size()) <= keep) return {};
  steps.resize(steps.size() - static_cast<size_t>(keep));
  for (auto step : steps) runtime::remove_tree((fs::path(folder) / step_dir_name(step)).string());
  sync_directory(folder);
  return steps;
}

void remove_uncommitted(const std::string& folder) {
  std::error_code ec;
  if (!fs::is_directory(folder, ec)) return;
  std::vector<std::string> stale;
  for (const auto& entry : fs::directory_iterator(folder)) {
    const auto name = entry.path().filename().string();
    if (name.starts_with(kStepPrefix) && name.find(kTmpMarker) != std::string::npos) stale.push_back(entry.path());
  }
  for (const auto& path : stale) runtime::remove_tree(path);
}

}  // namespace troupe::checkpoint
