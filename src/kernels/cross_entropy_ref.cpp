#include <algorithm>
#include <cmath>

#include "kernels/cross_entropy.h"

namespace troupe::kernels {

void cross_entropy_ref(float* logits, float* losses, const int64_t* targets, int64_t rows, int64_t vocab,
                       float grad_scale) {
  for (int64_t r = 0; r < rows; ++r) {
    float* l = logits + r * vocab;
    const double m = *std::max_element(l, l + vocab);
    double sum = 0;
    for (int64_t i = 0; i < vocab; ++i) sum += std::exp(l[i] - m);
    const double log_sum = std::log(sum) + m;
    const bool ignored = targets[r] < 0;
    losses[r] = ignored ? 0.f : static_cast<float>(log_sum - l[targets[r]]);
    if (grad_scale == 0.f) continue;
    for (int64_t i = 0; i < vocab; ++i) {
      const double p = std::exp(l[i] - log_sum);
      l[i] = ignored ? 0.f : static_cast<float>(grad_scale * (p - (i == targets[r] ? 1.0 : 0.0)));
    }
  }
}

}  // namespace troupe::kernels
