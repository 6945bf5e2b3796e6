// Memory figures for the log line.
#pragma once
#include <cstdint>

namespace troupe::runtime {

// Resident set size of this process in bytes (0 where /proc is unavailable).
uint64_t resident_bytes();

}  // namespace troupe::runtime
