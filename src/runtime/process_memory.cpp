#include "runtime/process_memory.h"

#include <unistd.h>

#include <fstream>

namespace troupe::runtime {

uint64_t resident_bytes() {
  std::ifstream statm("/proc/self/statm");
  uint64_t size = 0, resident = 0;
  if (!(statm >> size >> resident)) return 0;
  return resident * static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
}

}  // namespace troupe::runtime
