// The checkpoint folder: committed steps are directories named step-N, and nothing else is.
// A step is written under step-N.tmp-<nonce> and committed by one rename, so a crash at any
// moment leaves either the previous steps or the new one, never a half step that looks whole.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "checkpoint/checkpoint_metadata.h"
#include "config/job_config.h"

namespace troupe::checkpoint {

// <job.dump_folder>/<checkpoint.folder>
std::string checkpoint_folder(const config::JobConfig& cfg);

std::string step_dir_name(int64_t step);  // "step-N"
// A fresh uncommitted directory name for `step` in `folder` (not created).
std::string new_tmp_dir(const std::string& folder, int64_t step);

// Committed steps, ascending. A missing folder has none.
std::vector<int64_t> committed_steps(const std::string& folder);

// `path` is a checkpoint folder (the newest committed step, or `step`) or a step directory.
// Throws naming the path when there is no such committed step.
std::string resolve_step_dir(const std::string& path, std::optional<int64_t> step = std::nullopt);

// metadata.json of a step directory, checked (format version, fields).
CheckpointMetadata read_metadata(const std::string& step_dir);

// Writes metadata.json into `tmp_dir`, makes it durable and renames it to step-N (atomically
// replacing an existing step-N), then syncs the folder. Returns the step directory.
std::string commit_step(const std::string& folder, const std::string& tmp_dir, const CheckpointMetadata& meta);

// Deletes the oldest committed steps beyond the newest `keep` (0 keeps all); returns them.
std::vector<int64_t> prune_committed(const std::string& folder, int64_t keep);

// Removes leftovers of writes that never committed (a crash, a full disk).
void remove_uncommitted(const std::string& folder);

}  // namespace troupe::checkpoint
