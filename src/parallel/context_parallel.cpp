#include "parallel/context_parallel.h"

#include <ATen/ATen.h>

#include <stdexcept>
#include <string>

namespace troupe::parallel {

at::Tensor context_parallel_positions(int64_t seq, int64_t rank, int64_t cp) {
  if (seq % (2 * cp) != 0)
    throw std::invalid_argument("a sequence of " + std::to_string(seq) + " tokens does not cut into 2 x " +
                                std::to_string(cp) + " equal chunks");
  const auto chunk = seq / (2 * cp);
  const auto opts = at::TensorOptions().dtype(at::kLong);
  return at::cat({at::arange(rank * chunk, (rank + 1) * chunk, opts),
                  at::arange((2 * cp - 1 - rank) * chunk, (2 * cp - rank) * chunk, opts)});
}

models::UnitBatch context_parallel_part(const models::UnitBatch& whole, int64_t rank, int64_t cp) {
  const auto seq = whole.tokens.size(1);
  const auto device = whole.tokens.device();
  std::vector<at::Tensor> parts;
  for (int64_t r = 0; r < cp; ++r) parts.push_back(context_parallel_positions(seq, r, cp));
  auto out = whole;
  out.all_positions = at::cat(parts).to(device);
  out.positions = parts[rank].to(device);
  out.tokens = whole.tokens.index_select(1, out.positions);
  out.targets = whole.targets.index_select(1, out.positions);
  if (whole.documents.defined()) {
    out.documents = whole.documents.index_select(1, out.positions);
    out.all_documents = whole.documents.index_select(1, out.all_positions);
  }
  return out;
}

}  // namespace troupe::parallel
