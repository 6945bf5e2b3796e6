#include "comm/nccl_communicator.h"

#ifdef TROUPE_WITH_CUDA
#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <nccl.h>

#include <atomic>
#include <cstring>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>

#include "comm/side_stream.h"
#include "kernels/cuda_check.h"
#include "runtime/crash_report.h"
#endif

namespace troupe::comm {

#ifdef TROUPE_WITH_CUDA

namespace {

ncclDataType_t nccl_type(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return ncclFloat32;
    case at::kBFloat16: return ncclBfloat16;
    case at::kHalf: return ncclFloat16;
    case at::kDouble: return ncclFloat64;
    case at::kLong: return ncclInt64;
    case at::kInt: return ncclInt32;
    case at::kByte: return ncclUint8;
    default: throw std::invalid_argument(std::string("NCCL: unsupported dtype ") + c10::toString(t));
  }
}

ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum: return ncclSum;
    case ReduceOp::avg: return ncclAvg;
    case ReduceOp::max: return ncclMax;
  }
  return ncclSum;
}

class NcclCommunicator : public Communicator {
 public:
  NcclCommunicator(Rendezvous& rdzv, const std::string& group, int rank, int size, int device,
                   std::shared_ptr<FlightRecorder> recorder)
      : name_(group), rank_(rank), size_(size), device_(device), timeout_(rdzv.operation_timeout()),
        recorder_(std::move(recorder)) {
    c10::cuda::CUDAGuard guard(device_);
    ncclUniqueId id;
    const auto key = "nccl/" + group + "/id";
    if (rank == 0) {
      check(ncclGetUniqueId(&id), "ncclGetUniqueId");
      rdzv.set(key, std::string(reinterpret_cast<const char*>(&id), sizeof id));
    } else {
      const auto bytes = rdzv.get(key);
      if (bytes.size() != sizeof id) throw CommError(describe("the published NCCL id has the wrong size"));
      std::memcpy(&id, bytes.data(), sizeof id);
    }
    check(ncclCommInitRank(&comm_, size, id, rank), "ncclCommInitRank");
    if (recorder_) recorder_->joined(name_, rank_, size_);
    stream_ = c10::cuda::getStreamFromPool(/*isHighPriority=*/true, device_);
    watchdog_ = std::thread([this] { watch(); });
  }

  ~NcclCommunicator() override {
    // ncclCommDestroy waits for this rank's unfinished operations without a limit; when a peer
    // has failed they never finish (seen: a process of 2 GPUs that outlived its failed rank by
    // minutes). So wait here for them, as long as the watchdog lets them run: it aborts the
    // communicator once the oldest one is past its deadline.
    for (;;) {
      while (pop_if_finished()) {
      }
      {
        std::lock_guard lock(mu_);
        if (pending_.empty() || aborted_) {
          stopping_ = true;
          break;
        }
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    cv_.notify_all();
    watchdog_.join();
    if (!aborted_) ncclCommDestroy(comm_);  // an aborted communicator is already gone
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const std::string& name() const override { return name_; }

  WorkPtr all_gather(at::Tensor out, at::Tensor in) override {
    require(out.numel() == in.numel() * size_, "all_gather: output must hold size x input elements");
    return issue("all_gather", {out, in}, [&](cudaStream_t s) {
      return ncclAllGather(in.data_ptr(), out.data_ptr(), in.numel(), nccl_type(in.scalar_type()), comm_, s);
    });
  }

  WorkPtr all_gather(const std::vector<at::Tensor>& outs, const std::vector<at::Tensor>& ins) override {
    const auto wrong = grouped_shape_error("all_gather", ins, outs, size_);
    require(wrong.empty(), wrong);
    return issue("all_gather", concatenated(outs, ins), [&](cudaStream_t s) {
      return grouped(ins.size(), [&](size_t k) {
        return ncclAllGather(ins[k].data_ptr(), outs[k].data_ptr(), ins[k].numel(), nccl_type(ins[k].scalar_type()),
                             comm_, s);
      });
    });
  }

  WorkPtr reduce_scatter(at::Tensor out, at::Tensor in, ReduceOp op) override {
    require(in.numel() == out.numel() * size_, "reduce_scatter: input must hold size x output elements");
    return issue("reduce_scatter", {out, in}, [&](cudaStream_t s) {
      return ncclReduceScatter(in.data_ptr(), out.data_ptr(), out.numel(), nccl_type(in.scalar_type()), nccl_op(op),
                               comm_, s);
    });
  }

  WorkPtr reduce_scatter(const std::vector<at::Tensor>& outs, const std::vector<at::Tensor>& ins,
                         ReduceOp op) override {
    const auto wrong = grouped_shape_error("reduce_scatter", outs, ins, size_);
    require(wrong.empty(), wrong);
    return issue("reduce_scatter", concatenated(outs, ins), [&](cudaStream_t s) {
      return grouped(ins.size(), [&](size_t k) {
        return ncclReduceScatter(ins[k].data_ptr(), outs[k].data_ptr(), outs[k].numel(), nccl_type(ins[k].scalar_type()),
                                 nccl_op(op), comm_, s);
      });
    });
  }

  WorkPtr all_reduce(at::Tensor t, ReduceOp op) override {
    return issue("all_reduce", {t}, [&](cudaStream_t s) {
      return ncclAllReduce(t.data_ptr(), t.data_ptr(), t.numel(), nccl_type(t.scalar_type()), nccl_op(op), comm_, s);
    });
  }

  WorkPtr broadcast(at::Tensor t, int root) override {
    return issue("broadcast", {t}, [&](cudaStream_t s) {
      return ncclBroadcast(t.data_ptr(), t.data_ptr(), t.numel(), nccl_type(t.scalar_type()), root, comm_, s);
    });
  }

  WorkPtr send(at::Tensor t, int peer) override {
    return issue("send to rank " + std::to_string(peer), {t}, [&](cudaStream_t s) {
      return ncclSend(t.data_ptr(), t.numel(), nccl_type(t.scalar_type()), peer, comm_, s);
    });
  }

  WorkPtr recv(at::Tensor t, int peer) override {
    return issue("recv from rank " + std::to_string(peer), {t}, [&](cudaStream_t s) {
      return ncclRecv(t.data_ptr(), t.numel(), nccl_type(t.scalar_type()), peer, comm_, s);
    });
  }

  WorkPtr send_recv(at::Tensor out, int to, at::Tensor in, int from) override {
    require(out.scalar_type() == in.scalar_type(), "send_recv: the sent and received tensors differ in dtype");
    return issue("send to rank " + std::to_string(to) + ", recv from rank " + std::to_string(from), {out, in},
                 [&](cudaStream_t s) {
                   return grouped(2, [&](size_t k) {
                     return k == 0 ? ncclSend(out.data_ptr(), out.numel(), nccl_type(out.scalar_type()), to, comm_, s)
                                   : ncclRecv(in.data_ptr(), in.numel(), nccl_type(in.scalar_type()), from, comm_, s);
                   });
                 });
  }

  // Grouped sends and receives, one pair per peer (none for an empty share): one launch.
  WorkPtr all_to_all(at::Tensor out, const std::vector<int64_t>& out_rows, at::Tensor in,
                     const std::vector<int64_t>& in_rows) override {
    const auto wrong = all_to_all_error(out, out_rows, in, in_rows, size_);
    require(wrong.empty(), wrong);
    const int64_t row = in.size(0) > 0 ? in.numel() / in.size(0) : (out.size(0) > 0 ? out.numel() / out.size(0) : 0);
    const auto bytes = static_cast<int64_t>(in.element_size()) * row;
    return issue("all_to_all", {out, in}, [&](cudaStream_t s) {
      std::vector<std::function<ncclResult_t()>> ops;
      int64_t sent = 0, received = 0;
      for (int r = 0; r < size_; ++r) {
        auto* from = static_cast<char*>(in.data_ptr()) + sent * bytes;
        auto* to = static_cast<char*>(out.data_ptr()) + received * bytes;
        if (in_rows[r] > 0)
          ops.push_back([=, this] { return ncclSend(from, in_rows[r] * bytes, ncclUint8, r, comm_, s); });
        if (out_rows[r] > 0)
          ops.push_back([=, this] { return ncclRecv(to, out_rows[r] * bytes, ncclUint8, r, comm_, s); });
        sent += in_rows[r];
        received += out_rows[r];
      }
      return grouped(ops.size(), [&](size_t k) { return ops[k](); });
    });
  }

  void barrier() override {
    c10::cuda::CUDAGuard guard(device_);
    auto one = at::ones({1}, at::TensorOptions().dtype(at::kFloat).device(at::kCUDA, device_));
    all_reduce(one, ReduceOp::sum)->wait();
    // The host waits too: a barrier orders the ranks' host code.
    const auto deadline = std::chrono::steady_clock::now() + timeout_;
    while (cudaStreamQuery(c10::cuda::getCurrentCUDAStream()) == cudaErrorNotReady) {
      raise_if_failed();
      if (std::chrono::steady_clock::now() > deadline) throw CommError(describe("barrier timed out"));
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  }

 private:
  struct Pending {
    std::shared_ptr<at::cuda::CUDAEvent> done;
    std::chrono::steady_clock::time_point deadline;
    std::string what;
    uint64_t record;  // in recorder_
  };

  std::string describe(const std::string& op) const {
    return "nccl group '" + name_ + "' (rank " + std::to_string(rank_) + " of " + std::to_string(size_) + ", cuda:" +
           std::to_string(device_) + "): " + op;
  }

  void require(bool ok, const std::string& what) const {
    if (!ok) throw std::invalid_argument(describe(what));
  }

  void check(ncclResult_t r, const char* call) const {
    if (r != ncclSuccess) throw CommError(describe(std::string(call) + " failed: " + ncclGetErrorString(r)));
  }

  void raise_if_failed() {
    std::lock_guard lock(mu_);
    if (!error_.empty()) throw CommError(error_);
  }

  // n operations in one NCCL group: one launch.
  template <class Op>
  static ncclResult_t grouped(size_t n, Op&& op) {
    ncclResult_t r = ncclGroupStart();
    if (r != ncclSuccess) return r;
    for (size_t k = 0; k < n && r == ncclSuccess; ++k) r = op(k);
    const ncclResult_t ended = ncclGroupEnd();  // a started group is ended, even after an error
    return r == ncclSuccess ? ended : r;
  }

  template <class Launch>
  WorkPtr issue(const std::string& op, const std::vector<at::Tensor>& tensors, Launch&& launch) {
    raise_if_failed();
    for (const auto& t : tensors) {
      require(t.is_cuda() && t.get_device() == device_, op + ": tensors must be on cuda:" + std::to_string(device_));
      require(t.is_contiguous(), op + ": tensors must be contiguous");
    }
    c10::cuda::CUDAGuard guard(device_);
    follow_current_stream(stream_);
    // Recorded before the launch: a launch that blocks shows as this operation, unfinished.
    const auto record = record_issue(recorder_.get(), name_, op, tensors);
    try {
      check(launch(stream_.stream()), op.c_str());
    } catch (...) {
      if (recorder_) recorder_->ended(record, /*failed=*/true);
      throw;
    }
    auto done = end_on(stream_);
    {
      std::lock_guard lock(mu_);
      pending_.push_back({done, std::chrono::steady_clock::now() + timeout_, op, record});
    }
    cv_.notify_all();
    return std::make_unique<StreamWork>(done, stream_, tensors, recorder_);
  }

  // The oldest operation, when it has finished, leaves the queue (true). Its event is queried
  // without the lock: if a driver lock held elsewhere stalls cudaEventQuery, issue() must still
  // get the lock, and the stall watch then names the stuck thread.
  bool pop_if_finished() {
    std::shared_ptr<at::cuda::CUDAEvent> oldest;
    {
      std::lock_guard lock(mu_);
      if (pending_.empty()) return false;
      oldest = pending_.front().done;
    }
    if (!oldest->query()) return false;
    std::lock_guard lock(mu_);
    // The destructor pops too: take out only the operation that was queried.
    if (!pending_.empty() && pending_.front().done == oldest) {
      if (recorder_) recorder_->ended(pending_.front().record);
      pending_.pop_front();
    }
    return true;
  }

  // A dead or stuck peer leaves an operation unfinished: after the timeout the communicator is
  // aborted (which also unblocks the GPU) and every later call throws.
  void watch() {
    for (;;) {
      {
        std::unique_lock lock(mu_);
        cv_.wait_for(lock, std::chrono::milliseconds(100));
        if (stopping_) return;
        if (aborted_) continue;  // the communicator is gone; only the destructor's stop is left
      }
      while (pop_if_finished()) {
      }
      ncclResult_t async_err = ncclSuccess;
      ncclCommGetAsyncError(comm_, &async_err);
      std::lock_guard lock(mu_);
      std::string failure;
      if (async_err != ncclSuccess && async_err != ncclInProgress)
        failure = describe(std::string("asynchronous error: ") + ncclGetErrorString(async_err));
      else if (!pending_.empty() && std::chrono::steady_clock::now() > pending_.front().deadline)
        failure = describe(pending_.front().what + " did not finish within " + std::to_string(timeout_.count()) +
                           " ms (a peer died or stopped)");
      if (!failure.empty() && !aborted_) {
        // Where every thread is, before the abort changes it: a rank of this process stuck in a
        // CUDA call can be what holds the collective up.
        if (async_err == ncclSuccess || async_err == ncclInProgress)
          runtime::dump_thread_stacks(failure.c_str(), /*once=*/true);
        error_ = failure;
        aborted_ = true;
        ncclCommAbort(comm_);
        if (recorder_)
          for (const auto& p : pending_) recorder_->ended(p.record, /*failed=*/true);
        pending_.clear();
      }
    }
  }

  std::string name_;
  int rank_, size_, device_;
  std::chrono::milliseconds timeout_;
  std::shared_ptr<FlightRecorder> recorder_;
  ncclComm_t comm_ = nullptr;
  c10::cuda::CUDAStream stream_ = c10::cuda::getDefaultCUDAStream();
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Pending> pending_;
  std::string error_;
  bool stopping_ = false;
  std::atomic<bool> aborted_{false};
  std::thread watchdog_;
};

}  // namespace

bool nccl_available() { return true; }

CommunicatorPtr make_nccl_communicator(Rendezvous& rdzv, const std::string& group, int rank, int size, int device,
                                       std::shared_ptr<FlightRecorder> recorder) {
  return std::make_shared<NcclCommunicator>(rdzv, group, rank, size, device, std::move(recorder));
}

#else

bool nccl_available() { return false; }

CommunicatorPtr make_nccl_communicator(Rendezvous&, const std::string& group, int, int, int,
                                       std::shared_ptr<FlightRecorder>) {
  throw CommError("nccl group '" + group + "': this build has no CUDA (TROUPE_CUDA=OFF)");
}

#endif

}  // namespace troupe::comm
