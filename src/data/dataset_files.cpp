#include "data/dataset_files.h"

#include <glob.h>

#include <algorithm>
#include <filesystem>
#include <stdexcept>
#include <system_error>

namespace troupe::data {

namespace {

bool is_glob(const std::string& path) { return path.find_first_of("*?[") != std::string::npos; }

std::vector<std::string> glob_files(const std::string& pattern) {
  glob_t g{};
  const int rc = ::glob(pattern.c_str(), 0, nullptr, &g);
  std::vector<std::string> out;
  if (rc == 0)
    for (size_t i = 0; i < g.gl_pathc; ++i)
      if (std::filesystem::is_regular_file(g.gl_pathv[i])) out.emplace_back(g.gl_pathv[i]);
  globfree(&g);
  return out;
}

std::vector<std::string> directory_files(const std::string& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (auto it = std::filesystem::recursive_directory_iterator(dir, ec); !ec && it != std::filesystem::end(it);
       it.increment(ec)) {
    const auto name = it->path().filename().string();
    if (it->is_regular_file() && !name.empty() && name[0] != '.') out.push_back(it->path().string());
  }
  if (ec) throw std::runtime_error("dataset directory '" + dir + "' cannot be read: " + ec.message());
  return out;
}

}  // namespace

std::vector<std::string> dataset_files(const std::string& path) {
  std::vector<std::string> files;
  if (is_glob(path))
    files = glob_files(path);
  else if (std::filesystem::is_directory(path))
    files = directory_files(path);
  else if (std::filesystem::exists(path))
    files = {path};
  if (files.empty()) throw std::runtime_error("dataset path '" + path + "' names no file");
  std::sort(files.begin(), files.end());
  return files;
}

}  // namespace troupe::data
