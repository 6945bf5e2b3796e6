// torchtitan's model converter "quantize.linear.float8": applied over a built model before
// parallelism, it names the projections that compute in FP8 (kernels/float8_linear.h), whatever
// the family. Every models::Projection is a candidate, except those `filter_fqns` keeps in bf16.
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "config/job_config.h"
#include "kernels/float8_linear.h"

namespace troupe::models { class Model; }

namespace troupe::train {

struct Float8Conversion {
  std::vector<std::string> converted;                       // projection names, in model order
  std::vector<std::pair<std::string, std::string>> kept;    // (name, why it stays in bf16)
  // One paragraph for the start-up log: the recipe, the rule of auto_filter_small_kn, and which
  // projections run in FP8 (names folded over the layers: "layers.*.attention.wq").
  std::string describe(kernels::Float8Recipe recipe) const;
};

// Registers the chosen projections' weights in `linears` and hands it to the model's services.
// Kept in bf16: a projection whose name contains a `filter_fqns` entry; with
// "auto_filter_small_kn", those kernels::float8_small_kn_reason rules out; and the head's output
// projection (its GEMM is fused into the loss kernel).
Float8Conversion convert_to_float8(models::Model& model, const config::Float8Section& cfg,
                                   kernels::Float8Linears& linears);

}  // namespace troupe::train
