// What the inspection page plots, kept by node 0 as steps finish: the run's history (every step
// while it is short; older steps thinned as it grows, so a long run stays a few thousand rows),
// the validation losses, each rank's last step and its recent ones, the last step's MoE load per
// layer and expert, and the last recorded pipeline step. Thread-safe: the coordinator and the
// metrics sink write, the HTTP workers read.
#pragma once
#include <array>
#include <cstdint>
#include <deque>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "train/step_stats.h"

namespace troupe::actors {

// step, loss, tokens/s, MFU (0..1), lr, grad norm, peak memory bytes.
using HistoryRow = std::array<double, 7>;

struct RankStep {
  train::StepStats last;  // its `aux`, `aux_counts` and `pipeline` are dropped
  std::deque<double> recent_step_seconds, recent_memory_bytes;  // oldest first
};

class StepRecord {
 public:
  static constexpr size_t kMaxRows = 4096;  // more: the older half is thinned to every other row
  static constexpr size_t kRecent = 60;     // per rank, for its sparklines

  // memory_kind: "gpu_active" (peak active bytes of the largest rank) or "rss".
  void add_step(const HistoryRow& row, const std::string& memory_kind);
  void add_validation(int64_t step, double loss);
  // The rows after `step` (all with step < 0), the memory kind, and every validation loss.
  struct History {
    std::vector<HistoryRow> rows;
    std::string memory_kind;
    std::vector<std::pair<int64_t, double>> validation;
  };
  History history_after(double step) const;
  std::optional<double> last_validation_loss() const;

  // Each rank's step as the coordinator received it (rank order). Also keeps the step's tokens
  // per member of each MoE layer (StepStats::aux_counts; of each name the first rank's report,
  // as StepStats::aux is combined), and the ranks' pipeline actions when recorded (times from
  // the step's first action).
  void add_rank_steps(const std::vector<train::StepStats>& ranks);
  std::vector<RankStep> rank_steps() const;
  using Loads = std::vector<std::pair<std::string, std::vector<double>>>;
  std::pair<int64_t, Loads> moe_loads() const;
  using PipelineRecord = std::vector<std::pair<int64_t, std::vector<train::PipelineSpan>>>;  // (rank, actions)
  std::pair<int64_t, PipelineRecord> pipeline() const;

  // The steps of the latest MoE loads and pipeline record (0: none), for the page to poll.
  int64_t moe_step() const;
  int64_t pipeline_step() const;

 private:
  mutable std::mutex mutex_;
  std::vector<HistoryRow> rows_;
  std::string memory_kind_ = "rss";
  std::vector<std::pair<int64_t, double>> validation_;
  std::vector<RankStep> ranks_;
  int64_t moe_step_ = 0, pipeline_step_ = 0;
  Loads moe_;
  PipelineRecord pipeline_;
};

}  // namespace troupe::actors
