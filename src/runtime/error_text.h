// What an error says to the user. libtorch's errors (c10::Error) carry a C++ backtrace in what(),
// dozens of frames that bury the one line that names the problem; this keeps that line.
#pragma once
#include <exception>
#include <string>

namespace troupe::runtime {

std::string error_text(const std::exception& e);

// An allocation that failed: a GPU's out-of-memory error, the CPU allocator's, std::bad_alloc.
bool out_of_memory(const std::exception& e);

}  // namespace troupe::runtime
