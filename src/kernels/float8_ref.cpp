// The host side of float8.h: the scale layouts and rules both the kernels and the bindings use,
// the byte conversions, and the quantize reference (plain loops, fp32 arithmetic as the kernel's).
#include <cmath>
#include <cstring>
#include <map>
#include <tuple>
#include <algorithm>
#include <stdexcept>

#include "kernels/float8.h"

namespace troupe::kernels {

namespace {

struct Format {
  int mantissa_bits, bias, max_code;  // max_code: the byte of the largest finite value
  float max;
};
Format format_of(Fp8Format f) {
  return f == Fp8Format::e4m3 ? Format{3, 7, 0x7E, kFp8E4m3Max} : Format{2, 15, 0x7B, kFp8E5m2Max};
}

}  // namespace

int64_t fp8_scale_count(ScaleGranularity g, int64_t rows, int64_t cols) {
  switch (g) {
    case ScaleGranularity::tensor: return 1;
    case ScaleGranularity::row: return rows;
    case ScaleGranularity::tile: return ceil_div(cols, kFp8Tile) * rows;
    case ScaleGranularity::block: return ceil_div(rows, kFp8Tile) * round_up(ceil_div(cols, kFp8Tile), 4);
  }
  return 0;
}

int64_t fp8_scale_index(ScaleGranularity g, int64_t rows, int64_t cols, int64_t r, int64_t c) {
  switch (g) {
    case ScaleGranularity::tensor: return 0;
    case ScaleGranularity::row: return r;
    case ScaleGranularity::tile: return (c / kFp8Tile) * rows + r;
    case ScaleGranularity::block: return (r / kFp8Tile) * round_up(ceil_div(cols, kFp8Tile), 4) + c / kFp8Tile;
  }
  return 0;
}

float fp8_scale(float amax, Fp8Format f, bool pow2) {
  float s = std::max(amax, kFp8AmaxFloor) / fp8_max(f);
  if (pow2) {
    uint32_t b;
    std::memcpy(&b, &s, 4);
    if (b & 0x7FFFFFu) b = (b & 0xFF800000u) + 0x800000u;
    std::memcpy(&s, &b, 4);
  }
  return s;
}

uint8_t fp8_from_float(float v, Fp8Format f) {
  const auto F = format_of(f);
  if (std::isnan(v)) return 0x7F;  // NaN in both formats
  const uint8_t sign = std::signbit(v) ? 0x80 : 0;
  const double a = std::fabs(static_cast<double>(v));
  if (a >= F.max) return sign | F.max_code;
  const int min_exp = 1 - F.bias;  // the smallest normal's exponent
  int e = a == 0 ? min_exp : static_cast<int>(std::floor(std::log2(a)));
  if (e < min_exp) e = min_exp;
  const double step = std::ldexp(1.0, e - F.mantissa_bits);
  const double q = std::nearbyint(a / step) * step;  // the default rounding mode: to nearest even
  if (q == 0) return sign;
  int qe = static_cast<int>(std::floor(std::log2(q)));
  if (qe < min_exp) return sign | static_cast<uint8_t>(q / std::ldexp(1.0, min_exp - F.mantissa_bits));  // subnormal
  const int mant = static_cast<int>(std::lround((q / std::ldexp(1.0, qe) - 1) * (1 << F.mantissa_bits)));
  const int code = ((qe + F.bias) << F.mantissa_bits) | mant;
  return sign | static_cast<uint8_t>(std::min(code, F.max_code));
}

float fp8_to_float(uint8_t q, Fp8Format f) {
  const auto F = format_of(f);
  const int exp_bits = 7 - F.mantissa_bits;
  const int e = (q >> F.mantissa_bits) & ((1 << exp_bits) - 1), m = q & ((1 << F.mantissa_bits) - 1);
  const float sign = (q & 0x80) ? -1.f : 1.f;
  if (f == Fp8Format::e4m3 && e == 15 && m == 7) return NAN;
  if (f == Fp8Format::e5m2 && e == 31) return m ? NAN : sign * INFINITY;
  if (e == 0) return sign * std::ldexp(static_cast<float>(m), 1 - F.bias - F.mantissa_bits);
  return sign * std::ldexp(1.f + static_cast<float>(m) / (1 << F.mantissa_bits), e - F.bias);
}

void fp8_quantize_ref(const Fp8QuantizeArgs& a) {
  if (a.in_dtype != Dtype::f32) throw std::invalid_argument("fp8_quantize_ref takes fp32 input");
  const auto* in = static_cast<const float*>(a.in);
  const int64_t R = a.rows, C = a.cols, T = kFp8Tile;
  // The run maxima each element's two scales come from: out's (along its row) and out_t's
  // (along its column).
  std::map<std::tuple<int64_t, int64_t, int64_t, int64_t>, float> memo;
  auto run_max = [&](int64_t r, int64_t c, bool along_row) {
    int64_t r_lo = 0, r_hi = R, c_lo = 0, c_hi = C;
    switch (a.granularity) {
      case ScaleGranularity::tensor: break;
      case ScaleGranularity::row:
        if (along_row) r_lo = r, r_hi = r + 1;
        else c_lo = c, c_hi = c + 1;
        break;
      case ScaleGranularity::tile:
        if (along_row) r_lo = r, r_hi = r + 1, c_lo = c / T * T, c_hi = std::min(C, c_lo + T);
        else c_lo = c, c_hi = c + 1, r_lo = r / T * T, r_hi = std::min(R, r_lo + T);
        break;
      case ScaleGranularity::block:
        r_lo = r / T * T, r_hi = std::min(R, r_lo + T), c_lo = c / T * T, c_hi = std::min(C, c_lo + T);
        break;
    }
    const auto key = std::make_tuple(r_lo, r_hi, c_lo, c_hi);
    if (const auto it = memo.find(key); it != memo.end()) return it->second;
    float m = 0;
    for (int64_t i = r_lo; i < r_hi; ++i)
      for (int64_t j = c_lo; j < c_hi; ++j) m = std::max(m, std::fabs(in[i * C + j]));
    return memo[key] = m;
  };
  for (int64_t r = 0; r < R; ++r)
    for (int64_t c = 0; c < C; ++c) {
      const float v = in[r * C + c];
      if (a.out) {
        const float s = fp8_scale(run_max(r, c, true), a.format, a.pow2);
        a.out[r * C + c] = fp8_from_float(v * (1.0f / s), a.format);
        a.out_scale[fp8_scale_index(a.granularity, R, C, r, c)] = s;
      }
      if (a.out_t) {
        const float s = fp8_scale(run_max(r, c, false), a.format, a.pow2);
        a.out_t[c * a.ld_t + r] = fp8_from_float(v * (1.0f / s), a.format);
        a.out_t_scale[fp8_scale_index(a.granularity, C, a.ld_t, c, r)] = s;
      }
    }
  if (a.out_t)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t r = R; r < a.ld_t; ++r) a.out_t[c * a.ld_t + r] = 0;
}

}  // namespace troupe::kernels
