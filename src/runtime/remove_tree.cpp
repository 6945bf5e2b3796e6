#include "runtime/remove_tree.h"

#include <ftw.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <stdexcept>

namespace troupe::runtime {

namespace {

thread_local std::string failed_entry;

int remove_entry(const char* path, const struct stat*, int, struct FTW*) {
  if (std::remove(path) != 0) {
    failed_entry = std::string(path) + ": " + std::strerror(errno);
    return 1;
  }
  return 0;
}

}  // namespace

void remove_tree(const std::string& path) {
  struct stat st;
  if (lstat(path.c_str(), &st) != 0 && errno == ENOENT) return;
  // Depth first so that directories are empty when their turn comes; never follow links.
  if (nftw(path.c_str(), remove_entry, 16, FTW_DEPTH | FTW_PHYS) != 0)
    throw std::runtime_error("cannot remove " + (failed_entry.empty() ? path : failed_entry));
}

}  // namespace troupe::runtime
