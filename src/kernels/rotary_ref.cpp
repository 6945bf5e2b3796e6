#include "kernels/rotary.h"

namespace troupe::kernels {

void rotary_ref(float* out, const float* x, const float* cos, const float* sin, int64_t batch, int64_t seq,
                int64_t heads, int64_t head_dim, bool inverse) {
  const int64_t half = head_dim / 2;
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t s = 0; s < seq; ++s)
      for (int64_t h = 0; h < heads; ++h)
        for (int64_t i = 0; i < half; ++i) {
          const int64_t at = ((b * seq + s) * heads + h) * head_dim + 2 * i;
          const double c = cos[s * half + i], sn = (inverse ? -1.0 : 1.0) * sin[s * half + i];
          const double x0 = x[at], x1 = x[at + 1];
          out[at] = static_cast<float>(x0 * c - x1 * sn);
          out[at + 1] = static_cast<float>(x0 * sn + x1 * c);
        }
}

}  // namespace troupe::kernels
