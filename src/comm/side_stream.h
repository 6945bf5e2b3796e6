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

// The caller's current CUDA stream waits for the operation; the host does not block. With a
// recorder, the stream's stall is timed between two events around the wait and added to the
// recorder's exposed communication once the device has passed them: zero when the operation
// ended before the stream reached the wait, what was left of it when not.
// The operation's tensors are held until the wait has put the waiter's stream after it; dropped
// then, their blocks are free for that stream at once. (Marking them as used by the side stream
// instead defers every free until an event query sees the side stream past it: with the host
// running a step ahead of the device, whole layers' gathers and gradients piled up.) A work
// dropped unwaited marks them so.
class StreamWork : public Work {
 public:
  StreamWork(std::shared_ptr<at::cuda::CUDAEvent> done, c10::cuda::CUDAStream side, std::vector<at::Tensor> tensors,
             std::shared_ptr<FlightRecorder> recorder = nullptr)
      : done_(std::move(done)), side_(side), tensors_(std::move(tensors)), recorder_(std::move(recorder)) {}
  ~StreamWork() override {
    for (const auto& t : tensors_)
      if (t.storage().data_ptr().get()) c10::cuda::CUDACachingAllocator::recordStream(t.storage().data_ptr(), side_);
  }
  void wait() override {
    if (!done_) return;
    const auto stream = c10::cuda::getCurrentCUDAStream();
    if (!recorder_) {
      done_->block(stream);
    } else {
      auto reached = std::make_shared<at::cuda::CUDAEvent>(cudaEventDefault);
      auto passed = std::make_shared<at::cuda::CUDAEvent>(cudaEventDefault);
      reached->record(stream);
      done_->block(stream);
      passed->record(stream);
      recorder_->add_device_wait([reached, passed] {
        return passed->query() ? 1e-3 * static_cast<double>(reached->elapsed_time(*passed)) : -1.0;
      });
    }
    done_.reset();
    tensors_.clear();
  }

 private:
  std::shared_ptr<at::cuda::CUDAEvent> done_;
  c10::cuda::CUDAStream side_;
  std::vector<at::Tensor> tensors_;
  std::shared_ptr<FlightRecorder> recorder_;
};

// `side` starts once the caller's current stream has produced the inputs.
inline void follow_current_stream(const c10::cuda::CUDAStream& side) {
  at::cuda::CUDAEvent ready;
  ready.record(c10::cuda::getCurrentCUDAStream());
  ready.block(side);
}

// After the operation is queued on `side`: the event that marks its end.
inline std::shared_ptr<at::cuda::CUDAEvent> end_on(const c10::cuda::CUDAStream& side) {
  auto done = std::make_shared<at::cuda::CUDAEvent>();
  done->record(side);
  return done;
}

}  // namespace troupe::comm
