#include "actors/step_record.h"

#include <algorithm>
#include <limits>
#include <set>

namespace troupe::actors {

void StepRecord::add_step(const HistoryRow& row, const std::string& memory_kind) {
  std::lock_guard lock(mutex_);
  // A resumed run's steps replace what an earlier run (read back from metrics.jsonl) had there.
  while (!rows_.empty() && rows_.back()[0] >= row[0]) rows_.pop_back();
  rows_.push_back(row);
  memory_kind_ = memory_kind;
  if (rows_.size() <= kMaxRows) return;
  // The older half keeps every other row: recent steps stay whole, the start of a long run thins.
  const size_t half = rows_.size() / 2;
  size_t kept = 0;
  for (size_t i = 0; i < half; i += 2) rows_[kept++] = rows_[i];
  rows_.erase(rows_.begin() + static_cast<std::ptrdiff_t>(kept), rows_.begin() + static_cast<std::ptrdiff_t>(half));
}

void StepRecord::add_validation(int64_t step, double loss) {
  std::lock_guard lock(mutex_);
  while (!validation_.empty() && validation_.back().first >= step) validation_.pop_back();
  validation_.emplace_back(step, loss);
}

StepRecord::History StepRecord::history_after(double step) const {
  std::lock_guard lock(mutex_);
  History out{{}, memory_kind_, validation_};
  auto first = std::upper_bound(rows_.begin(), rows_.end(), step,
                                [](double s, const HistoryRow& row) { return s < row[0]; });
  out.rows.assign(first, rows_.end());
  return out;
}

std::optional<double> StepRecord::last_validation_loss() const {
  std::lock_guard lock(mutex_);
  if (validation_.empty()) return std::nullopt;
  return validation_.back().second;
}

void StepRecord::add_rank_steps(const std::vector<train::StepStats>& ranks) {
  if (ranks.empty()) return;
  Loads loads;
  std::set<std::string> named;
  PipelineRecord pipeline;
  double first_ms = std::numeric_limits<double>::infinity();
  for (const auto& r : ranks) {
    for (const auto& [name, counts] : r.aux_counts)
      if (named.insert(name).second) loads.emplace_back(name, counts);
    if (!r.pipeline.empty()) {
      pipeline.emplace_back(r.rank, r.pipeline);
      for (const auto& a : r.pipeline) first_ms = std::min(first_ms, a.start_ms);
    }
  }
  for (auto& [rank, spans] : pipeline)
    for (auto& a : spans) a.start_ms -= first_ms, a.end_ms -= first_ms;
  const int64_t step = ranks.front().step;
  std::lock_guard lock(mutex_);
  ranks_.resize(ranks.size());
  for (size_t i = 0; i < ranks.size(); ++i) {
    auto& kept = ranks_[i];
    kept.last = ranks[i];
    kept.last.aux.clear();
    kept.last.aux_counts.clear();
    kept.last.pipeline.clear();
    const auto& s = ranks[i];
    const double memory = s.gpu_peak_active_bytes > 0 ? static_cast<double>(s.gpu_peak_active_bytes)
                                                     : static_cast<double>(s.rss_bytes);
    kept.recent_step_seconds.push_back(s.compute_seconds + s.data_wait_seconds);
    kept.recent_memory_bytes.push_back(memory);
    if (kept.recent_step_seconds.size() > kRecent) kept.recent_step_seconds.pop_front();
    if (kept.recent_memory_bytes.size() > kRecent) kept.recent_memory_bytes.pop_front();
  }
  if (!loads.empty()) moe_step_ = step, moe_ = std::move(loads);
  if (!pipeline.empty()) pipeline_step_ = step, pipeline_ = std::move(pipeline);
}

std::vector<RankStep> StepRecord::rank_steps() const {
  std::lock_guard lock(mutex_);
  return ranks_;
}

std::pair<int64_t, StepRecord::Loads> StepRecord::moe_loads() const {
  std::lock_guard lock(mutex_);
  return {moe_step_, moe_};
}

std::pair<int64_t, StepRecord::PipelineRecord> StepRecord::pipeline() const {
  std::lock_guard lock(mutex_);
  return {pipeline_step_, pipeline_};
}

int64_t StepRecord::moe_step() const {
  std::lock_guard lock(mutex_);
  return moe_step_;
}

int64_t StepRecord::pipeline_step() const {
  std::lock_guard lock(mutex_);
  return pipeline_step_;
}

}  // namespace troupe::actors
