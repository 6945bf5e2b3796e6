// The data plane between ranks (DESIGN §5): collectives and point-to-point transfers over one
// group of ranks. Two engines on real libraries: NCCL for CUDA tensors, Gloo (libtorch's c10d)
// for CPU tensors. Every operation is issued in the caller's program order (DESIGN §4: one owner
// per communicator) and returns a Work to wait on; waits are bounded by the communicator's
// timeout, so a dead peer ends the job with an error instead of a hang. The caller may drop its
// references to an operation's tensors once it is issued: Gloo's work holds them, and NCCL
// records them on its stream so that the caching allocator does not reuse them early.
#pragma once
#include <ATen/core/Tensor.h>

#include <chrono>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "comm/flight_recorder.h"

namespace troupe::comm {

enum class ReduceOp { sum, avg, max };

// A peer died, timed out, or the library reported an error; the message names the group, the
// operation and the ranks.
class CommError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class Work {
 public:
  virtual ~Work() = default;
  // Gloo: blocks until done (bounded by the timeout). NCCL: makes the caller's current CUDA
  // stream wait for the operation (the host does not block); a watchdog enforces the timeout.
  virtual void wait() = 0;
};
using WorkPtr = std::unique_ptr<Work>;

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;  // within this group
  virtual int size() const = 0;
  virtual const std::string& name() const = 0;

  // out (size × in.numel(), contiguous) = every rank's `in`, in rank order.
  virtual WorkPtr all_gather(at::Tensor out, at::Tensor in) = 0;
  // Several all-gathers as one operation (NCCL: one group, one launch): each outs[k] as above
  // for ins[k]. FSDP gathers a unit's parameters straight into their places so, and reduces
  // their gradients from their places.
  virtual WorkPtr all_gather(const std::vector<at::Tensor>& outs, const std::vector<at::Tensor>& ins) = 0;
  // out (in.numel() / size) = this rank's chunk of the reduction of every rank's `in`.
  virtual WorkPtr reduce_scatter(at::Tensor out, at::Tensor in, ReduceOp op) = 0;
  // Several reduce-scatters as one operation, as the grouped all-gather.
  virtual WorkPtr reduce_scatter(const std::vector<at::Tensor>& outs, const std::vector<at::Tensor>& ins,
                                 ReduceOp op) = 0;
  virtual WorkPtr all_reduce(at::Tensor t, ReduceOp op) = 0;
  virtual WorkPtr broadcast(at::Tensor t, int root) = 0;
  virtual WorkPtr send(at::Tensor t, int peer) = 0;
  virtual WorkPtr recv(at::Tensor t, int peer) = 0;
  // `out` sent to rank `to` while `in` is received from rank `from`, as one operation: a ring of
  // ranks that each send to the next and receive from the previous cannot deadlock (NCCL: one
  // group). Here: a send and a receive, both waited for.
  virtual WorkPtr send_recv(at::Tensor out, int to, at::Tensor in, int from);
  // Rows to and from every rank (expert parallelism's dispatch and combine): of `in` [rows, ...],
  // in rank order, in_rows[r] rows go to rank r; `out` receives out_rows[r] rows from rank r, in
  // rank order. Both contiguous, of one dtype; the counts must match the peers' (exchanged first).
  virtual WorkPtr all_to_all(at::Tensor out, const std::vector<int64_t>& out_rows, at::Tensor in,
                             const std::vector<int64_t>& in_rows) = 0;
  virtual void barrier() = 0;
};
using CommunicatorPtr = std::shared_ptr<Communicator>;

class BothWork : public Work {
 public:
  BothWork(WorkPtr a, WorkPtr b) : a_(std::move(a)), b_(std::move(b)) {}
  void wait() override {
    a_->wait();
    b_->wait();
  }

 private:
  WorkPtr a_, b_;
};

inline WorkPtr Communicator::send_recv(at::Tensor out, int to, at::Tensor in, int from) {
  auto sent = send(std::move(out), to);
  return std::make_unique<BothWork>(std::move(sent), recv(std::move(in), from));
}

// The grouped operations' shapes: as many `whole` tensors as `parts`, each holding `size` times
// its part's elements. What is wrong, or empty when they fit.
inline std::string grouped_shape_error(const std::string& op, const std::vector<at::Tensor>& parts,
                                       const std::vector<at::Tensor>& whole, int size) {
  if (parts.size() != whole.size()) return op + ": as many outputs as inputs";
  for (size_t k = 0; k < parts.size(); ++k)
    if (whole[k].numel() != parts[k].numel() * size)
      return op + ": tensor " + std::to_string(k) + " of the group must hold size x its part's elements";
  return {};
}

// An all-to-all's operands: what is wrong, or empty when they fit.
inline std::string all_to_all_error(const at::Tensor& out, const std::vector<int64_t>& out_rows, const at::Tensor& in,
                                    const std::vector<int64_t>& in_rows, int size) {
  if (static_cast<int>(out_rows.size()) != size || static_cast<int>(in_rows.size()) != size)
    return "all_to_all: a row count per rank is needed";
  if (out.scalar_type() != in.scalar_type()) return "all_to_all: the sent and received tensors differ in dtype";
  if (!out.is_contiguous() || !in.is_contiguous()) return "all_to_all: tensors must be contiguous";
  int64_t sent = 0, received = 0;
  for (int r = 0; r < size; ++r) {
    if (out_rows[r] < 0 || in_rows[r] < 0) return "all_to_all: a negative row count";
    sent += in_rows[r];
    received += out_rows[r];
  }
  if (in.dim() == 0 || out.dim() == 0 || in.sizes().slice(1) != out.sizes().slice(1))
    return "all_to_all: the sent and received rows differ in shape";
  if (in.size(0) != sent || out.size(0) != received)
    return "all_to_all: the tensors' rows differ from the counts (" + std::to_string(in.size(0)) + " sent for " +
           std::to_string(sent) + ", " + std::to_string(out.size(0)) + " received for " + std::to_string(received) + ")";
  return {};
}

// Every tensor of a grouped operation (the outputs, then the inputs).
inline std::vector<at::Tensor> concatenated(const std::vector<at::Tensor>& a, const std::vector<at::Tensor>& b) {
  std::vector<at::Tensor> all(a);
  all.insert(all.end(), b.begin(), b.end());
  return all;
}

// Records an operation's issue on `recorder` (null: nothing, id 0): its tensors' elements,
// outputs and inputs together, and the first one's dtype.
inline uint64_t record_issue(FlightRecorder* recorder, const std::string& group, const std::string& op,
                             const std::vector<at::Tensor>& tensors) {
  if (!recorder) return 0;
  int64_t elements = 0;
  for (const auto& t : tensors) elements += t.numel();
  return recorder->issued(group, op, elements, tensors.empty() ? "" : c10::toString(tensors.front().scalar_type()));
}

}  // namespace troupe::comm
