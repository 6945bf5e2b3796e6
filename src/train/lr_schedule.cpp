#include "train/lr_schedule.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace troupe::train {

LrSchedule::LrSchedule(double base_lr, int64_t total_steps, int64_t warmup_steps, std::optional<double> decay_ratio,
                       const std::string& decay_type, double min_lr_factor)
    : base_lr_(base_lr), min_factor_(min_lr_factor), total_(total_steps) {
  warmup_ = std::min(warmup_steps, total_steps);
  if (decay_ratio) {
    decay_ = std::llround(static_cast<double>(total_steps) * *decay_ratio);
    warmup_ = std::min(warmup_, total_steps - decay_);  // decay wins when both do not fit, as torchtitan
  } else {
    decay_ = total_steps - warmup_;
  }
  if (decay_type == "linear") type_ = Decay::linear;
  else if (decay_type == "cosine") type_ = Decay::cosine;
  else if (decay_type == "sqrt") type_ = Decay::sqrt;
  else throw std::invalid_argument("lr_scheduler.decay_type: unknown '" + decay_type + "' (linear, cosine, sqrt)");
}

double LrSchedule::lr(int64_t step) const {
  // Warmup starts above zero (step/(warmup+1)) so that the first step already learns.
  if (step <= warmup_) return base_lr_ * static_cast<double>(step) / static_cast<double>(warmup_ + 1);
  const int64_t decay_start = total_ - decay_;
  if (step <= decay_start || decay_ == 0) return base_lr_;
  const double progress = std::min(1.0, static_cast<double>(step - decay_start) / static_cast<double>(decay_));
  double f = 1.0;
  switch (type_) {
    case Decay::linear: f = 1.0 - progress; break;
    case Decay::cosine: f = 0.5 * (1.0 + std::cos(M_PI * progress)); break;
    case Decay::sqrt: f = 1.0 - std::sqrt(progress); break;
  }
  return base_lr_ * (min_factor_ + (1.0 - min_factor_) * f);
}

}  // namespace troupe::train
