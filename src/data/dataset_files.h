// Which files a dataset path names: one file, a directory (its files, recursively), or a glob
// pattern; always sorted by path so every rank and every run sees the same order.
#pragma once
#include <string>
#include <vector>

namespace troupe::data {

// std::runtime_error naming the path when it matches no readable file.
std::vector<std::string> dataset_files(const std::string& path);

}  // namespace troupe::data
