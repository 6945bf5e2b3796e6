// Recursive delete. Not std::filesystem::remove_all: the PyPI libtorch exports its own copy of
// that symbol, built against a newer libstdc++, and the dynamic linker binds our calls to it
// (it crashes through a null pointer with Debian 12's libstdc++).
#pragma once
#include <string>

namespace troupe::runtime {

// Removes `path` and everything below it; a missing path is not an error. Throws
// std::runtime_error naming the entry that could not be removed.
void remove_tree(const std::string& path);

}  // namespace troupe::runtime
