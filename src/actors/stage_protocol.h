// Coordinator -> stage: run one optimizer step; the reply carries its statistics.
#pragma once
#include <caf/all.hpp>

#include "actors/status_protocol.h"
#include "train/step_stats.h"

namespace troupe::actors {

using step_atom = caf::atom_constant<caf::atom("step")>;  // (step_atom, int64_t step) -> train::StepStats

}  // namespace troupe::actors

namespace troupe::train {
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, StepStats& x) {
  return f(caf::meta::type_name("step_stats"), x.step, x.loss, x.grad_norm, x.lr, x.tokens, x.compute_seconds,
           x.data_wait_seconds, x.wall_seconds, x.model_flops,
           x.peak_flops_per_second, x.gpu_peak_active_bytes, x.gpu_peak_reserved_bytes);
}
}  // namespace troupe::train
