#include "parallel/context_parallel.h"

#include <ATen/ATen.h>

#include <stdexcept>
#include <string>

namespace troupe::parallel {

ContextParallelLayout context_parallel_layout(int64_t seq, int64_t cp) {
  const auto opts = at::TensorOptions().dtype(at::kLong);
  if (cp == 1) return {{at::arange(seq, opts)}, at::arange(seq, opts)};
  if (seq % (2 * cp) != 0)
    throw std::invalid_argument("a sequence of " + std::to_string(seq) + " tokens does not cut into 2 x " +
                                std::to_string(cp) + " equal chunks");
  const auto chunk = seq / (2 * cp);
  ContextParallelLayout layout;
  for (int64_t r = 0; r < cp; ++r)
    layout.positions.push_back(at::cat({at::arange(r * chunk, (r + 1) * chunk, opts),
                                        at::arange((2 * cp - 1 - r) * chunk, (2 * cp - r) * chunk, opts)}));
  layout.rank_major = at::cat(layout.positions);
  return layout;
}

models::UnitBatch context_parallel_part(const models::UnitBatch& whole, const ContextParallelLayout& layout,
                                        int64_t rank) {
  const auto device = whole.tokens.device();
  auto out = whole;
  out.all_positions = layout.rank_major.to(device);
  out.host_positions = layout.positions.at(static_cast<size_t>(rank));
  out.positions = out.host_positions.to(device);
  out.all_tokens = whole.tokens;
  out.all_targets = whole.targets;
  out.tokens = whole.tokens.index_select(1, out.positions);
  out.targets = whole.targets.index_select(1, out.positions);
  if (whole.documents.defined()) {
    out.documents = whole.documents.index_select(1, out.positions);
    out.all_documents = whole.documents.index_select(1, out.all_positions);
  }
  return out;
}

}  // namespace troupe::parallel
