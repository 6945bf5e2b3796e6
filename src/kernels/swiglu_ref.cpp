#include <cmath>

#include "kernels/swiglu.h"

namespace troupe::kernels {

namespace {
double sigmoid(double v) { return 1.0 / (1.0 + std::exp(-v)); }
}  // namespace

void swiglu_forward_ref(float* out, const float* gate, const float* up, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<float>(gate[i] * sigmoid(gate[i]) * up[i]);
}

void swiglu_backward_ref(float* dgate, float* dup, const float* dout, const float* gate, const float* up, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const double s = sigmoid(gate[i]);
    dgate[i] = static_cast<float>(dout[i] * up[i] * s * (1.0 + gate[i] * (1.0 - s)));
    dup[i] = static_cast<float>(dout[i] * gate[i] * s);
  }
}

}  // namespace troupe::kernels
