// Coordinator -> stage: run one optimizer step, or a validation pass; the replies carry their results.
#pragma once
#include <caf/all.hpp>

#include "actors/status_protocol.h"
#include "train/step_stats.h"

namespace troupe::actors {

using step_atom = caf::atom_constant<caf::atom("step")>;  // (step_atom, int64_t step) -> train::StepStats
// Coordinator -> stage: the validation loss after `step` (mean over validation.steps batches,
// the same batches every time). (validate_atom, int64_t step) -> double loss
using validate_atom = caf::atom_constant<caf::atom("validate")>;

}  // namespace troupe::actors

namespace troupe::train {
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, PipelineSpan& x) {
  return f(caf::meta::type_name("pipeline_span"), x.op, x.stage, x.microbatch, x.start_ms, x.end_ms);
}
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, StepStats& x) {
  return f(caf::meta::type_name("step_stats"), x.step, x.loss, x.grad_norm, x.lr, x.tokens, x.compute_seconds,
           x.data_wait_seconds, x.wall_seconds, x.model_flops,
           x.peak_flops_per_second, x.gpu_peak_active_bytes, x.gpu_peak_reserved_bytes, x.aux, x.aux_counts, x.rank,
           x.node, x.optimizer_seconds, x.comm_wait_seconds, x.rss_bytes, x.pipeline);
}
}  // namespace troupe::train
