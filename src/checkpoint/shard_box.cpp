#include "checkpoint/shard_box.h"

#include <torch/torch.h>

#include <algorithm>

namespace troupe::checkpoint {

int64_t ShardBox::numel() const {
  int64_t n = 1;
  for (auto l : lengths) n *= l;
  return n;
}

ShardBox whole_box(const std::vector<int64_t>& shape) { return {std::vector<int64_t>(shape.size(), 0), shape}; }

ShardBox dim0_box(const std::vector<int64_t>& shape, int64_t index, int64_t parts) {
  auto box = whole_box(shape);
  if (shape.empty()) return index == 0 ? box : ShardBox{{}, {}};
  const int64_t rows = shape[0], per = (rows + parts - 1) / parts;
  box.offsets[0] = std::min(rows, index * per);
  box.lengths[0] = std::min(rows, box.offsets[0] + per) - box.offsets[0];
  return box;
}

std::optional<ShardBox> intersect(const ShardBox& a, const ShardBox& b) {
  if (a.offsets.size() != b.offsets.size()) return std::nullopt;
  ShardBox out = a;
  for (size_t d = 0; d < a.offsets.size(); ++d) {
    const int64_t lo = std::max(a.offsets[d], b.offsets[d]);
    const int64_t hi = std::min(a.offsets[d] + a.lengths[d], b.offsets[d] + b.lengths[d]);
    if (hi <= lo) return std::nullopt;
    out.offsets[d] = lo;
    out.lengths[d] = hi - lo;
  }
  return out;
}

namespace {
at::Tensor window(const at::Tensor& t, const ShardBox& holder, const ShardBox& part) {
  at::Tensor v = t;
  for (size_t d = 0; d < part.offsets.size(); ++d)
    v = v.narrow(static_cast<int64_t>(d), part.offsets[d] - holder.offsets[d], part.lengths[d]);
  return v;
}
}  // namespace

void copy_overlap(const at::Tensor& src, const ShardBox& src_box, at::Tensor& dst, const ShardBox& dst_box,
                  const ShardBox& overlap) {
  torch::NoGradGuard no_grad;
  window(dst, dst_box, overlap).copy_(window(src, src_box, overlap));
}

bool fits(const ShardBox& box, const std::vector<int64_t>& shape) {
  if (box.offsets.size() != shape.size() || box.lengths.size() != shape.size()) return false;
  for (size_t d = 0; d < shape.size(); ++d)
    if (box.offsets[d] < 0 || box.lengths[d] < 0 || box.offsets[d] + box.lengths[d] > shape[d]) return false;
  return true;
}

}  // namespace troupe::checkpoint
