// What one optimizer step reports. Plain data: it travels to the coordinator and metrics sink.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace troupe::train {

// One pipeline action as it ran: op is F, B, I, W, send or recv; times in ms on the rank's
// steady clock (ranks of one process share it).
struct PipelineSpan {
  std::string op;
  int64_t stage = 0, microbatch = 0;
  double start_ms = 0, end_ms = 0;
};

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
  // The units' per-member counts (tokens per expert of each MoE layer), the step's sum over its
  // micro-batches: the inspection page's heat map.
  std::vector<std::pair<std::string, std::vector<double>>> aux_counts;

  // Where this rank's step went (host clocks; on a GPU the host runs ahead, so these split the
  // host's time and the device's shows as the wait for the loss at the end, in compute).
  int64_t rank = 0, node = 0;
  double optimizer_seconds = 0;  // the optimizer step and expert balancing
  double comm_wait_seconds = 0;  // exposed communication: Gloo waits block the host, NCCL ones the stream
  int64_t rss_bytes = 0;         // the rank's process, at the end of the step
  // With pipelines and profiling.enable_profiling: this step's actions on this rank (the first
  // traced steps only, as the Chrome trace).
  std::vector<PipelineSpan> pipeline;
};

}  // namespace troupe::train
