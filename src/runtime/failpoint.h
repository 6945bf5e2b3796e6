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

// For tests of a whole `troupe` process: TROUPE_FAILPOINT="WHERE=throw" or "WHERE=hang" makes the
// process's failpoint WHERE throw or block forever (read at the process's first failpoint).
void install_failpoint_from_environment();

// "stage.activity": a stage's thread, as each unit's forward or backward or the optimizer begins.
// "<actor>.start": each actor as it starts (node_supervisor, coordinator, stage, data_loader,
// checkpoint_writer, metrics_sink).
void failpoint(const char* where, int64_t rank);

}  // namespace troupe::runtime
