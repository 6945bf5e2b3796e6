// Where a rank's piece of a tensor sits in the whole: per-dimension offsets and lengths. A
// checkpoint records a box per saved shard, so a load can assemble any other set of boxes
// (another parallel layout) from the overlaps.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <vector>

namespace troupe::checkpoint {

struct ShardBox {
  std::vector<int64_t> offsets;
  std::vector<int64_t> lengths;

  int64_t numel() const;
  bool operator==(const ShardBox&) const = default;
};

// The whole tensor of `shape` as one box.
ShardBox whole_box(const std::vector<int64_t>& shape);

// Piece `index` of `parts` along dim 0, as FSDP shards (torch.chunk sizes: ceil(n / parts)
// rows per piece, the last ones shorter or empty).
ShardBox dim0_box(const std::vector<int64_t>& shape, int64_t index, int64_t parts);

// The common part of two boxes of one tensor, if any.
std::optional<ShardBox> intersect(const ShardBox& a, const ShardBox& b);

// Copies the part of `src` (holding `src_box`) that lies inside `dst_box` into `dst`.
void copy_overlap(const at::Tensor& src, const ShardBox& src_box, at::Tensor& dst, const ShardBox& dst_box,
                  const ShardBox& overlap);

// Whether `box` lies inside a tensor of `shape`.
bool fits(const ShardBox& box, const std::vector<int64_t>& shape);

}  // namespace troupe::checkpoint
