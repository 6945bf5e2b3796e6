// What one optimizer step reports. Plain data: it travels to the coordinator and metrics sink.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

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
  double model_flops = 0;   // torchtitan's 6·N + attention FLOPs per token, times tokens
  double peak_flops_per_second = 0;  // the device's bf16 peak; 0 where unknown (CPU): no MFU
  int64_t gpu_peak_active_bytes = 0;    // during this step; 0 on the CPU
  int64_t gpu_peak_reserved_bytes = 0;
  // The units' auxiliary values (models::AuxValues), each the mean over the step's micro-batches:
  // "aux/<name>" in metrics.jsonl and TensorBoard.
  std::vector<std::pair<std::string, double>> aux;
};

}  // namespace troupe::train
