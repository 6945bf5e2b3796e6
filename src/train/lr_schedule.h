// Learning-rate schedule: linear warmup, a stable plateau, then linear/cosine/sqrt decay to
// min_lr_factor (torchtitan's warmup-stable-decay). Pure arithmetic, no libtorch.
#pragma once
#include <cstdint>
#include <optional>
#include <string>

namespace troupe::train {

class LrSchedule {
 public:
  LrSchedule(double base_lr, int64_t total_steps, int64_t warmup_steps, std::optional<double> decay_ratio,
             const std::string& decay_type, double min_lr_factor);
  // Learning rate of step `step` (1-based, as logged).
  double lr(int64_t step) const;
  int64_t warmup_steps() const { return warmup_; }
  int64_t decay_steps() const { return decay_; }

 private:
  enum class Decay { linear, cosine, sqrt };
  double base_lr_, min_factor_;
  int64_t total_, warmup_, decay_;
  Decay type_;
};

}  // namespace troupe::train
