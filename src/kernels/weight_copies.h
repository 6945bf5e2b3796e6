// Compute-dtype copies of fp32 master weights, kept from one forward to the next. Without them a
// projection casts its master in every forward (and again in every recompute); with them the
// cast happens once per optimizer step, and Troupe's AdamW kernel writes the new bf16 copy in
// the same pass that updates the master. A copy is used only while its weight's version (ATen's
// count of in-place writes) is the one it was made at, so a weight written any other way, such
// as a checkpoint load, is cast afresh.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <unordered_map>

#include "kernels/weight_services.h"

namespace troupe::kernels {

class WeightCopies {
 public:
  // `weight` in `dtype`: the kept copy when it is current, else a fresh cast, kept when the
  // weight is a contiguous fp32 tensor cast to bf16.
  at::Tensor cast(const at::Tensor& weight, at::ScalarType dtype);
  // The kept bf16 copy of `weight` when it is current, else undefined.
  at::Tensor current(const at::Tensor& weight) const;
  // The kept copy of `weight`, current or not, else undefined: where a writer of the whole
  // weight (the optimizer's kernel) writes the new copy too, and then calls mark_current.
  at::Tensor copy_of(const at::Tensor& weight) const;
  // `copy` (bf16, the weight's shape, storage the caller owns, such as a piece of FSDP's flat
  // send buffer) is the weight's copy from now on; stale until marked current.
  void place(const at::Tensor& weight, at::Tensor copy);
  // The copy holds the weight's values at the weight's present version. Views of one base share
  // its version counter: a writer of several such views moves every version first, then marks.
  void mark_current(const at::Tensor& weight);
  size_t size() const { return kept_.size(); }

 private:
  struct Kept {
    at::Tensor copy;
    int64_t version;
  };
  std::unordered_map<const void*, Kept> kept_;
};

// weight.to(dtype), contiguous, through the services' copies when they have them. Only for the
// forwards of the custom autograd functions, which differentiate the cast themselves.
at::Tensor compute_weight(const at::Tensor& weight, at::ScalarType dtype, const WeightServices* services);

}  // namespace troupe::kernels
