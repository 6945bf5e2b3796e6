// Float8 compute: quantizing a bf16/fp32 matrix to e4m3 or e5m2 with its scales, and the FP8
// GEMM over two quantized operands (cuBLASLt). A quantized matrix q with dequantization scales s
// stands for q * s; the GEMM multiplies by both operands' scales in its epilogue.
//
// Scale granularities (how many scales a [rows, cols] matrix has, and where each applies):
//   tensor: one;
//   row:    one per row (amax over the row), as cuBLASLt's outer-vector mode takes them;
//   tile:   one per 1 x 128 run of a row (DeepSeek-V3's activation tiles, cuBLASLt's VEC128);
//   block:  one per 128 x 128 block (DeepSeek-V3's weight blocks, cuBLASLt's BLK128x128).
// A GEMM reduces over cols (both operands are K-major: FP8 tensor cores take "TN" only), so a
// backward GEMM that reduces over the rows needs the transposed matrix: the quantize kernel
// writes it in the same pass, with the scales of the transposed matrix's own rows (the columns
// of the input: for `row`, amax over each column; for `tile`, 128 x 1 runs of a column).
#pragma once
#include <cstdint>

#include "kernels/element_types.h"

namespace troupe::kernels {

enum class Fp8Format { e4m3, e5m2 };
enum class ScaleGranularity { tensor, row, tile, block };

constexpr float kFp8E4m3Max = 448.0f;
constexpr float kFp8E5m2Max = 57344.0f;
constexpr float kFp8AmaxFloor = 1e-12f;  // an all-zero run gets a finite scale
constexpr int64_t kFp8Tile = 128;

inline float fp8_max(Fp8Format f) { return f == Fp8Format::e4m3 ? kFp8E4m3Max : kFp8E5m2Max; }
inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

// How many scales a [rows, cols] operand (K = cols) has in `g`, laid out as cuBLASLt reads them:
//   tensor 1; row `rows`; tile [ceil(cols/128)][rows] (rows contiguous);
//   block [ceil(rows/128)][round_up(ceil(cols/128), 4)] (the K-block index contiguous).
int64_t fp8_scale_count(ScaleGranularity g, int64_t rows, int64_t cols);
// Where the scale of element (r, c) sits in that layout.
int64_t fp8_scale_index(ScaleGranularity g, int64_t rows, int64_t cols, int64_t r, int64_t c);

// The dequantization scale for a run whose largest magnitude is `amax`: max(amax, floor) / fmt
// max, rounded up to a power of two when `pow2` (then the quantize multiply is exact). Values
// are quantized as saturate(x * (1 / scale)), rounded to nearest even.
float fp8_scale(float amax, Fp8Format f, bool pow2);

struct Fp8QuantizeArgs {
  Dtype in_dtype;
  const void* in;  // [rows, cols], row-major
  int64_t rows, cols;
  ScaleGranularity granularity;
  Fp8Format format;
  bool pow2;
  uint8_t* out = nullptr;  // [rows, cols], or null
  float* out_scale = nullptr;  // fp8_scale_count(g, rows, cols)
  // [cols, ld_t] with ld_t >= rows: the transpose, its columns past `rows` written as zeros (a
  // GEMM reducing over rows needs a multiple of 16); or null.
  uint8_t* out_t = nullptr;
  int64_t ld_t = 0;
  float* out_t_scale = nullptr;  // fp8_scale_count(g, cols, ld_t)
};

// Floats of workspace `fp8_quantize` needs (the amax pass of `tensor` and `row`).
int64_t fp8_quantize_workspace(const Fp8QuantizeArgs& a);
void fp8_quantize(const Fp8QuantizeArgs& a, float* workspace, cudaStream_t stream);
// The same on the host, fp32 input (the reference the kernel is tested against).
void fp8_quantize_ref(const Fp8QuantizeArgs& a);

// Byte <-> value of the two formats (the host's conversion, round to nearest even, saturating).
uint8_t fp8_from_float(float v, Fp8Format f);
float fp8_to_float(uint8_t q, Fp8Format f);

// out[m][n] = sum_k a[m][k] * b[n][k] * scales (+ out[m][n] when accumulate): a [m, k] and b
// [n, k] quantized row-major (leading dimensions lda, ldb), out [m, n] with leading dimension
// ldo, in bf16 or fp32. `a_g` may be tensor, row or tile; `b_g` tensor, row or block (tile too
// when a_g is tile); tensor and row go together with tensor or row. Runs on cuBLASLt with
// `handle` (a cublasLtHandle_t) and `workspace` of `workspace_bytes`.
struct Fp8Operand {
  const uint8_t* data;
  int64_t rows, ld;
  Fp8Format format;
  ScaleGranularity granularity;
  const float* scale;
};
void fp8_gemm(const Fp8Operand& a, const Fp8Operand& b, int64_t k, Dtype out_dtype, void* out, int64_t ldo,
              bool accumulate, bool fast_accum, void* handle, void* workspace, int64_t workspace_bytes,
              cudaStream_t stream);

}  // namespace troupe::kernels
