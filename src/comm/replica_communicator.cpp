#include "comm/replica_communicator.h"

#include <ATen/ATen.h>

#ifdef TROUPE_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>

#include "comm/side_stream.h"
#endif

#include <functional>
#include <optional>

namespace troupe::comm {

namespace {

class DoneWork : public Work {
 public:
  void wait() override {}
};

class ReplicaCommunicator : public Communicator {
 public:
  ReplicaCommunicator(std::string group, int size, int device)
      : name_(std::move(group)), size_(size), device_(device) {
    if (size < 1) throw std::invalid_argument("replica group '" + name_ + "': size must be at least 1");
#ifdef TROUPE_WITH_CUDA
    if (device_ >= 0) stream_ = c10::cuda::getStreamFromPool(/*isHighPriority=*/true, device_);
#endif
  }

  int rank() const override { return 0; }
  int size() const override { return size_; }
  const std::string& name() const override { return name_; }

  WorkPtr all_gather(at::Tensor out, at::Tensor in) override { return all_gather(std::vector{out}, std::vector{in}); }

  WorkPtr all_gather(const std::vector<at::Tensor>& outs, const std::vector<at::Tensor>& ins) override {
    require(grouped_shape_error("all_gather", ins, outs, size_));
    return issue(concatenated(outs, ins), [&] {
      // Contiguous copies (device-to-device memcpys, as fast as copies go), not one broadcast.
      for (size_t k = 0; k < ins.size(); ++k)
        for (int r = 0; r < size_; ++r)
          outs[k].reshape({-1}).narrow(0, r * ins[k].numel(), ins[k].numel()).copy_(ins[k].reshape({-1}));
    });
  }

  WorkPtr reduce_scatter(at::Tensor out, at::Tensor in, ReduceOp op) override {
    return reduce_scatter(std::vector{out}, std::vector{in}, op);
  }

  WorkPtr reduce_scatter(const std::vector<at::Tensor>& outs, const std::vector<at::Tensor>& ins,
                         ReduceOp op) override {
    require(grouped_shape_error("reduce_scatter", outs, ins, size_));
    return issue(concatenated(outs, ins), [&] {
      for (size_t k = 0; k < ins.size(); ++k)
        reduced(outs[k].copy_(ins[k].reshape({-1}).narrow(0, 0, outs[k].numel()).view_as(outs[k])), op);
    });
  }

  WorkPtr all_reduce(at::Tensor t, ReduceOp op) override {
    return issue({t}, [&] { reduced(t, op); });
  }

  WorkPtr broadcast(at::Tensor t, int) override { return issue({t}, [] {}); }
  WorkPtr send(at::Tensor, int peer) override { return unsupported("send to rank " + std::to_string(peer)); }
  WorkPtr recv(at::Tensor, int peer) override { return unsupported("recv from rank " + std::to_string(peer)); }
  // Every replica is this rank: what it sends is what it receives.
  WorkPtr send_recv(at::Tensor out, int, at::Tensor in, int) override {
    return issue({out, in}, [&] { in.copy_(out); });
  }
  // Every peer is a replica of this rank 0: each sends it what this rank sends rank 0, the first
  // in_rows[0] rows. Where the counts say otherwise (an uneven router: the replicas' counts
  // cannot all match), rank r's chunk is the first out_rows[r] rows of `in`, wrapping around:
  // the shapes and the bytes of the real exchange, for timing and memory.
  WorkPtr all_to_all(at::Tensor out, const std::vector<int64_t>& out_rows, at::Tensor in,
                     const std::vector<int64_t>& in_rows) override {
    require(all_to_all_error(out, out_rows, in, in_rows, size_));
    return issue({out, in}, [&] {
      int64_t offset = 0;
      for (int r = 0; r < size_; ++r) {
        auto chunk = out.narrow(0, offset, out_rows[r]);
        offset += out_rows[r];
        if (in.size(0) == 0) {
          chunk.zero_();
          continue;
        }
        for (int64_t done = 0; done < out_rows[r];) {
          const auto n = std::min(out_rows[r] - done, in.size(0));
          chunk.narrow(0, done, n).copy_(in.narrow(0, 0, n));
          done += n;
        }
      }
    });
  }
  void barrier() override {}

 private:
  // `size` equal contributions.
  void reduced(const at::Tensor& t, ReduceOp op) const {
    if (op == ReduceOp::sum && size_ > 1) t.mul_(size_);
  }

  void require(const std::string& wrong) const {
    if (!wrong.empty()) throw std::invalid_argument("replica group '" + name_ + "': " + wrong);
  }

  [[noreturn]] WorkPtr unsupported(const std::string& op) const {
    throw CommError("replica group '" + name_ + "': " + op + " has no replica to go to (pipelines are not emulated)");
  }

  WorkPtr issue(const std::vector<at::Tensor>& tensors, const std::function<void()>& copies) {
#ifdef TROUPE_WITH_CUDA
    if (device_ >= 0) {
      c10::cuda::CUDAGuard guard(device_);
      follow_current_stream(*stream_);
      {
        c10::cuda::CUDAStreamGuard on(*stream_);
        copies();
      }
      return std::make_unique<StreamWork>(end_on(*stream_), *stream_, tensors);
    }
#endif
    (void)tensors;
    copies();
    return std::make_unique<DoneWork>();
  }

  std::string name_;
  int size_, device_;
#ifdef TROUPE_WITH_CUDA
  std::optional<c10::cuda::CUDAStream> stream_;
#endif
};

}  // namespace

CommunicatorPtr make_replica_communicator(const std::string& group, int size, int device) {
  return std::make_shared<ReplicaCommunicator>(group, size, device);
}

}  // namespace troupe::comm
