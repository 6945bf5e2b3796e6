// Places where a test can step into a running job: the code calls failpoint(where, rank) and a
// test's handler may block there (a rank stuck in a driver call, which no timeout of a
// communicator reaches) or throw. Without a handler the call is one atomic load.
#pragma once
#include <cstdint>
#include <functional>

namespace troupe::runtime {

using FailpointHandler = std::function<void(const char* where, int64_t rank)>;

// Installs `handler` for the whole process (an empty one removes it).
void set_failpoint_handler(FailpointHandler handler);

// "stage.activity": a stage's thread, as each unit's forward or backward or the optimizer begins.
void failpoint(const char* where, int64_t rank);

}  // namespace troupe::runtime
