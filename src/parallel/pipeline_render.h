// Showing a pipeline schedule: a text timeline (one row per rank) and Chrome trace JSON (for
// chrome://tracing and Perfetto), for a simulated schedule and for what a run recorded alike.
#pragma once
#include <string>

#include "parallel/pipeline_simulation.h"

namespace troupe::parallel::pp {

// One row per rank, one column per time unit of `costs`; a cell names the compute and its
// micro-batch (F3, B3, I3, W3; interleaved: with the stage, F3s5), '.' is idle. Then the
// bubble fraction (and the formula's where there is one) and the peak in flight per rank.
std::string render_timeline(const Schedule& s, const Timeline& t, const Costs& costs = {});

// Chrome trace events: one track (tid) per rank, one complete event per compute (transfers as
// instant events); `microseconds_per_unit` scales the timeline's times. Timeline rank i is
// drawn as rank first_rank + i (a rank's own recorded trace is a one-rank timeline).
std::string chrome_trace(const Timeline& t, double microseconds_per_unit, const std::string& process_name,
                         int first_rank = 0);

}  // namespace troupe::parallel::pp
