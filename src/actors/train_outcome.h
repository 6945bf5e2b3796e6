// How a training job ended: what `troupe train` exits with and prints last.
#pragma once
#include <string>
#include <vector>

#include "train/step_stats.h"

namespace troupe::actors {

struct TrainOutcome {
  int exit_code = 0;
  std::string message;  // empty on a normal finish
  std::vector<train::StepStats> steps;
  bool stuck = false;  // a rank's thread is stuck for good: the teardown does not wait for it long
};

}  // namespace troupe::actors
