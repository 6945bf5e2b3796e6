#include "checkpoint/write_step.h"

#include <filesystem>

#include "checkpoint/checkpoint_folder.h"
#include "checkpoint/shard_file.h"
#include "runtime/remove_tree.h"

namespace troupe::checkpoint {

std::string write_step(const std::string& folder, HostSnapshot snapshot) {
  std::filesystem::create_directories(folder);
  snapshot.tmp_dir = new_tmp_dir(folder, snapshot.meta.step);
  try {
    std::filesystem::create_directories(snapshot.tmp_dir);
    return commit_step(folder, snapshot.tmp_dir, merge_ranks({write_shard(snapshot, snapshot.tmp_dir)}));
  } catch (...) {
    runtime::remove_tree(snapshot.tmp_dir);
    throw;
  }
}

}  // namespace troupe::checkpoint
