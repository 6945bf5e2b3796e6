// Process exit codes of `troupe train`, documented in the README.
#pragma once

namespace troupe::runtime::exit_code {

constexpr int ok = 0;            // finished, or stopped cleanly by SIGINT/SIGTERM after a step
constexpr int failed = 1;        // a step, the data loader or an actor failed
constexpr int bad_config = 2;    // the configuration was rejected before anything started
constexpr int diverged = 3;      // the loss became NaN or infinite
constexpr int interrupted = 130; // a second signal: abandoned without waiting for the step

}  // namespace troupe::runtime::exit_code
