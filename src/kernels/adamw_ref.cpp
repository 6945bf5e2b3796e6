#include <cmath>

#include "kernels/adamw.h"

namespace troupe::kernels {

void adamw_update_ref(const AdamTensor& t, const AdamHyper& h, int64_t step, float grad_divisor) {
  const double bias1 = 1 - std::pow(h.beta1, static_cast<double>(step));
  const double bias2 = 1 - std::pow(h.beta2, static_cast<double>(step));
  for (int64_t i = 0; i < t.numel; ++i) {
    double p = t.param[i], g = static_cast<double>(t.grad[i]) / grad_divisor;
    if (h.decoupled)
      p -= h.lr * h.weight_decay * p;
    else
      g += h.weight_decay * p;
    const double m = h.beta1 * t.exp_avg[i] + (1 - h.beta1) * g;
    const double v = h.beta2 * t.exp_avg_sq[i] + (1 - h.beta2) * g * g;
    p -= (h.lr / bias1) * m / (std::sqrt(v) / std::sqrt(bias2) + h.eps);
    t.param[i] = static_cast<float>(p);
    t.exp_avg[i] = static_cast<float>(m);
    t.exp_avg_sq[i] = static_cast<float>(v);
  }
}

}  // namespace troupe::kernels
