// What one optimizer step reports. Plain data: it travels to the coordinator and metrics sink.
#pragma once
#include <cstdint>

namespace troupe::train {

struct StepStats {
  int64_t step = 0;
  double loss = 0;        // mean over the step's micro-batches
  double grad_norm = 0;   // global L2 norm before clipping
  double lr = 0;
  int64_t tokens = 0;     // tokens consumed by the step
  double compute_seconds = 0;
  double data_wait_seconds = 0;  // time the stage waited for batches
  double wall_seconds = 0;  // from the coordinator's request to its reply
};

}  // namespace troupe::train
