// Benchmarks of `troupe_bench`; each prints a markdown table.
#pragma once
#include "config/job_config.h"

namespace troupe::bench {

int actor_overhead(const config::JobConfig& cfg, int rounds);

}  // namespace troupe::bench
