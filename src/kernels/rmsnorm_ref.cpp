#include <cmath>

#include "kernels/rmsnorm.h"

namespace troupe::kernels {

void rmsnorm_forward_ref(float* out, float* rstd, const float* x, const float* weight, int64_t rows, int64_t dim,
                         float eps) {
  for (int64_t r = 0; r < rows; ++r) {
    double sum_sq = 0;
    for (int64_t i = 0; i < dim; ++i) sum_sq += static_cast<double>(x[r * dim + i]) * x[r * dim + i];
    const double s = 1.0 / std::sqrt(sum_sq / static_cast<double>(dim) + eps);
    rstd[r] = static_cast<float>(s);
    for (int64_t i = 0; i < dim; ++i) out[r * dim + i] = static_cast<float>(x[r * dim + i] * s * weight[i]);
  }
}

void rmsnorm_backward_ref(float* dx, float* dweight, const float* dout, const float* x, const float* weight,
                          const float* rstd, int64_t rows, int64_t dim) {
  for (int64_t r = 0; r < rows; ++r) {
    const double s = rstd[r];
    double dot = 0;
    for (int64_t i = 0; i < dim; ++i) dot += static_cast<double>(weight[i]) * dout[r * dim + i] * x[r * dim + i] * s;
    const double mean_dot = dot / static_cast<double>(dim);
    for (int64_t i = 0; i < dim; ++i) {
      const double xhat = x[r * dim + i] * s;
      dx[r * dim + i] = static_cast<float>(s * (weight[i] * dout[r * dim + i] - xhat * mean_dot));
      dweight[i] += static_cast<float>(dout[r * dim + i] * xhat);
    }
  }
}

}  // namespace troupe::kernels
