// Running a pipeline schedule on a model of the machine, to check it before any rank runs it
// and to measure what it promises: bubble fraction and peak micro-batches in flight.
#pragma once
#include <string>
#include <vector>

#include "parallel/pipeline_schedule.h"

namespace troupe::parallel::pp {

struct TimedAction {
  Action action;
  double start = 0, end = 0;  // a transfer: when both ranks had posted it (start == end)
};

struct Timeline {
  std::vector<std::vector<TimedAction>> per_rank;  // in execution order
  double makespan = 0;
  std::vector<double> busy;           // per rank: time spent computing
  std::vector<int> peak_in_flight;    // per rank: most (stage, micro-batch) activations held at once
  // Idle time over the makespan, averaged over ranks.
  double bubble() const;
};

// The model: each rank runs its list in order, one compute at a time; a transfer is posted when
// its rank reaches it and completes once both ranks have posted it and every transfer posted
// before it on either rank has completed (one in-order channel per rank, as an NCCL stream;
// blocking point-to-point); a compute starts when its inputs are there. Throws ScheduleError
// on a deadlock (naming what each rank waits for), on transfers the two ranks post in
// different orders, and on a send posted before its data exists.
// implicit_transfers: ignore transfer actions and let data move between ranks instantly (the
// generators use it on compute-only lists).
Timeline simulate(const Schedule& s, const Costs& costs = {}, bool implicit_transfers = false);

// Every rule a schedule must follow, then simulate(): each stage computes F once per
// micro-batch then B (or I then W), on its own rank; F before B before W; every data dependency
// between ranks has exactly one matching send and receive; nothing deadlocks.
Timeline check(const Schedule& s, const Costs& costs = {});

// (p - 1) / (m + p - 1): the bubble of GPipe and 1F1B when B costs twice F or any fixed ratio.
double one_f_one_b_bubble(int ranks, int microbatches);

}  // namespace troupe::parallel::pp
