// fp8_gemm (float8.h) on cuBLASLt. cuBLASLt is column-major: the row-major out [m, n] is its
// column-major [n, m], computed as op(A) [n, k] x op(B) [k, m] with A = b (transposed: b's rows
// are K-major) and B = a (not transposed): the "TN" layout FP8 tensor cores require. So cuBLAS's
// A scale is b's, and its B scale a's. The algorithm of each shape is asked of the heuristic once.
#ifdef TROUPE_WITH_CUDA
#include <cublasLt.h>

#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <tuple>

#include "kernels/float8.h"

namespace troupe::kernels {

namespace {

void check(cublasStatus_t status, const char* what) {
  if (status != CUBLAS_STATUS_SUCCESS)
    throw std::runtime_error(std::string("cuBLASLt error ") + cublasLtGetStatusName(status) + " in " + what);
}
#define TROUPE_CUBLASLT_CHECK(call) check((call), #call)

cublasLtMatmulMatrixScale_t scale_mode(ScaleGranularity g) {
  switch (g) {
    case ScaleGranularity::tensor: return CUBLASLT_MATMUL_MATRIX_SCALE_SCALAR_32F;
    case ScaleGranularity::row: return CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F;
    case ScaleGranularity::tile: return CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F;
    case ScaleGranularity::block: return CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F;
  }
  return CUBLASLT_MATMUL_MATRIX_SCALE_SCALAR_32F;
}

cudaDataType_t data_type(Fp8Format f) { return f == Fp8Format::e4m3 ? CUDA_R_8F_E4M3 : CUDA_R_8F_E5M2; }

// Descriptors own cuBLASLt objects; destroyed with the plan.
struct Plan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
  ~Plan() {
    if (op) cublasLtMatmulDescDestroy(op);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (c) cublasLtMatrixLayoutDestroy(c);
  }
};

using PlanKey = std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int, int, int, int, int, bool, bool,
                           void*, int64_t>;

std::string describe(const Fp8Operand& a, const Fp8Operand& b, int64_t k) {
  return "m=" + std::to_string(a.rows) + " n=" + std::to_string(b.rows) + " k=" + std::to_string(k);
}

std::unique_ptr<Plan> make_plan(const Fp8Operand& a, const Fp8Operand& b, int64_t k, Dtype out_dtype, int64_t ldo,
                                bool fast_accum, cublasLtHandle_t handle, int64_t workspace_bytes) {
  auto p = std::make_unique<Plan>();
  TROUPE_CUBLASLT_CHECK(cublasLtMatmulDescCreate(&p->op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t t = CUBLAS_OP_T, n = CUBLAS_OP_N;
  TROUPE_CUBLASLT_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &t, sizeof t));
  TROUPE_CUBLASLT_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &n, sizeof n));
  const int32_t mode_a = scale_mode(b.granularity), mode_b = scale_mode(a.granularity);
  TROUPE_CUBLASLT_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &mode_a, sizeof mode_a));
  TROUPE_CUBLASLT_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &mode_b, sizeof mode_b));
  const int8_t fast = fast_accum ? 1 : 0;
  TROUPE_CUBLASLT_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_FAST_ACCUM, &fast, sizeof fast));
  // The scale pointers differ per call but must be set for the heuristic to see the modes.
  const void* dummy = b.scale;
  TROUPE_CUBLASLT_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &dummy, sizeof dummy));
  dummy = a.scale;
  TROUPE_CUBLASLT_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &dummy, sizeof dummy));
  const auto out_type = out_dtype == Dtype::bf16 ? CUDA_R_16BF : CUDA_R_32F;
  // A = b as stored: column-major [k, n] (b's rows K-major), ld = b.ld; B = a: [k, m], ld = a.ld.
  TROUPE_CUBLASLT_CHECK(cublasLtMatrixLayoutCreate(&p->a, data_type(b.format), k, b.rows, b.ld));
  TROUPE_CUBLASLT_CHECK(cublasLtMatrixLayoutCreate(&p->b, data_type(a.format), k, a.rows, a.ld));
  TROUPE_CUBLASLT_CHECK(cublasLtMatrixLayoutCreate(&p->c, out_type, b.rows, a.rows, ldo));
  cublasLtMatmulPreference_t pref;
  TROUPE_CUBLASLT_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  const uint64_t ws = static_cast<uint64_t>(workspace_bytes);
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  auto status = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws);
  if (status == CUBLAS_STATUS_SUCCESS)
    status = cublasLtMatmulAlgoGetHeuristic(handle, p->op, p->a, p->b, p->c, p->c, pref, 1, &result, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  check(status, "cublasLtMatmulAlgoGetHeuristic");
  if (found == 0)
    throw std::runtime_error("cuBLASLt has no FP8 algorithm for " + describe(a, b, k) + " with these scale modes");
  p->algo = result.algo;
  return p;
}

}  // namespace

void fp8_gemm(const Fp8Operand& a, const Fp8Operand& b, int64_t k, Dtype out_dtype, void* out, int64_t ldo,
              bool accumulate, bool fast_accum, void* handle, void* workspace, int64_t workspace_bytes,
              cudaStream_t stream) {
  if (a.rows == 0 || b.rows == 0) return;
  auto* lt = static_cast<cublasLtHandle_t>(handle);
  static std::mutex mutex;
  static std::map<PlanKey, std::unique_ptr<Plan>> plans;
  const PlanKey key{a.rows, b.rows, k, a.ld, b.ld, ldo, static_cast<int>(a.format), static_cast<int>(b.format),
                    static_cast<int>(a.granularity), static_cast<int>(b.granularity), static_cast<int>(out_dtype),
                    accumulate, fast_accum, handle, workspace_bytes};
  // One lock over the plan and the call: the descriptor is shared by every call of this shape,
  // and the scale pointers are set on it for the call that reads them.
  std::lock_guard<std::mutex> lock(mutex);
  auto& plan = plans[key];
  if (!plan) plan = make_plan(a, b, k, out_dtype, ldo, fast_accum, lt, workspace_bytes);
  const void* sa = b.scale;
  const void* sb = a.scale;
  TROUPE_CUBLASLT_CHECK(cublasLtMatmulDescSetAttribute(plan->op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &sa, sizeof sa));
  TROUPE_CUBLASLT_CHECK(cublasLtMatmulDescSetAttribute(plan->op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &sb, sizeof sb));
  const float alpha = 1.f, beta = accumulate ? 1.f : 0.f;
  TROUPE_CUBLASLT_CHECK(cublasLtMatmul(lt, plan->op, &alpha, b.data, plan->a, a.data, plan->b, &beta, out, plan->c, out,
                                       plan->c, &plan->algo, workspace, static_cast<size_t>(workspace_bytes), stream));
}

}  // namespace troupe::kernels
#endif  // TROUPE_WITH_CUDA
