// How a CUDA engine runs its collectives beside compute (NCCL's, and the replica group's local
// copies): on a stream of its own, after the caller's stream has produced the inputs, waited for
// by making the waiter's stream wait. CUDA builds only; include it under TROUPE_WITH_CUDA.
#pragma once
#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAStream.h>

#include <memory>
#include <vector>

#include "comm/communicator.h"

namespace troupe::comm {

// The caller's current CUDA stream waits for the operation; the host does not block.
class StreamWork : public Work {
 public:
  explicit StreamWork(std::shared_ptr<at::cuda::CUDAEvent> done) : done_(std::move(done)) {}
  void wait() override {
    if (done_) done_->block(c10::cuda::getCurrentCUDAStream());
    done_.reset();
  }

 private:
  std::shared_ptr<at::cuda::CUDAEvent> done_;
};

// `side` starts once the caller's current stream has produced the inputs.
inline void follow_current_stream(const c10::cuda::CUDAStream& side) {
  at::cuda::CUDAEvent ready;
  ready.record(c10::cuda::getCurrentCUDAStream());
  ready.block(side);
}

// After the operation is queued on `side`: the caching allocator must not hand the tensors'
// blocks out again before `side` is done with them. Returns the event that marks that.
inline std::shared_ptr<at::cuda::CUDAEvent> end_on(const c10::cuda::CUDAStream& side,
                                                   const std::vector<at::Tensor>& tensors) {
  for (const auto& t : tensors) c10::cuda::CUDACachingAllocator::recordStream(t.storage().data_ptr(), side);
  auto done = std::make_shared<at::cuda::CUDAEvent>();
  done->record(side);
  return done;
}

}  // namespace troupe::comm
