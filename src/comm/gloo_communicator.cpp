#include "comm/gloo_communicator.h"

#define USE_C10D_GLOO 1
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>

#include "comm/rendezvous_store.h"
#include "runtime/error_text.h"

#include <cstdlib>
#include <mutex>

namespace troupe::comm {

namespace {

// libtorch's flight recorder (a process-wide log of every c10d collective, on by default) adds a
// process group to a std::map outside its own lock when the group issues a collective (torch
// 2.11, FlightRecorderDetail.hpp, recordWithResetEnabled). Ranks sharing a process that issue at
// the same moment corrupted it: SIGSEGV in std::_Rb_tree_insert_and_rebalance under
// ProcessGroupGloo::enqueue, seen in CI and caught in a core dump here. Troupe reads nothing from
// it, so it is off unless asked for, and every collective is issued under one process-wide lock
// (issuing only enqueues: the lock is held for microseconds, never across a wait).
[[maybe_unused]] const bool flight_recorder_off = [] {
  if (!std::getenv("TORCH_FR_BUFFER_SIZE") && !std::getenv("TORCH_NCCL_TRACE_BUFFER_SIZE"))
    setenv("TORCH_FR_BUFFER_SIZE", "0", /*overwrite=*/0);  // before main: no other thread yet
  return true;
}();

std::mutex& issue_lock() {
  static std::mutex m;
  return m;
}

class GlooWork : public Work {
 public:
  GlooWork(c10::intrusive_ptr<c10d::Work> work, std::string what, std::chrono::milliseconds timeout,
           std::function<void()> after, std::shared_ptr<FlightRecorder> recorder, uint64_t record)
      : work_(std::move(work)), what_(std::move(what)), timeout_(timeout), after_(std::move(after)),
        recorder_(std::move(recorder)), record_(record) {}
  ~GlooWork() override {
    // Dropped unwaited (a send nobody waits for): finished if Gloo says so.
    if (work_ && recorder_ && work_->isCompleted()) recorder_->ended(record_);
  }
  void wait() override {
    if (!work_) return;
    const auto began = std::chrono::steady_clock::now();
    try {
      work_->wait(timeout_);
      if (recorder_) recorder_->add_wait(std::chrono::steady_clock::now() - began);
    } catch (const std::exception& e) {
      if (recorder_) recorder_->ended(record_, /*failed=*/true);
      throw CommError(what_ + " failed: " + runtime::error_text(e));
    }
    work_.reset();
    if (recorder_) recorder_->ended(record_);
    if (after_) after_();
  }

 private:
  c10::intrusive_ptr<c10d::Work> work_;
  std::string what_;
  std::chrono::milliseconds timeout_;
  std::function<void()> after_;
  std::shared_ptr<FlightRecorder> recorder_;
  uint64_t record_;
};

c10d::ReduceOp gloo_op(ReduceOp op) {
  // Gloo has no average: sum, then divide once the sum is in.
  return op == ReduceOp::max ? c10d::ReduceOp::MAX : c10d::ReduceOp::SUM;
}

class GlooCommunicator : public Communicator {
 public:
  GlooCommunicator(Rendezvous& rdzv, const std::string& group, int rank, int size,
                   std::shared_ptr<FlightRecorder> recorder)
      : name_(group), rank_(rank), size_(size), timeout_(rdzv.operation_timeout()), recorder_(std::move(recorder)) {
    // Connecting may take the rendezvous' (longer) timeout; each operation then gets its own.
    auto opts = c10d::ProcessGroupGloo::Options::create_default(std::max(timeout_, rdzv.timeout()));
    opts->devices = {rdzv.local_host().empty() ? c10d::ProcessGroupGloo::createDefaultDevice()
                                               : c10d::ProcessGroupGloo::createDeviceForHostname(rdzv.local_host())};
    opts->threads = 2;
    try {
      auto prefixed = c10::make_intrusive<c10d::PrefixStore>("gloo/" + group, rdzv.store()->store);
      pg_ = c10::make_intrusive<c10d::ProcessGroupGloo>(prefixed, rank, size, opts);
    } catch (const std::exception& e) {
      throw CommError(describe("connecting") + " failed: " + runtime::error_text(e));
    }
    if (recorder_) recorder_->joined(name_, rank_, size_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const std::string& name() const override { return name_; }

  WorkPtr all_gather(at::Tensor out, at::Tensor in) override {
    check(out.numel() == in.numel() * size_, "all_gather: output must hold size x input elements");
    return issue("all_gather", {out, in}, [&] { return pg_->_allgather_base(out, in); });
  }

  WorkPtr all_gather(const std::vector<at::Tensor>& outs, const std::vector<at::Tensor>& ins) override {
    const auto wrong = grouped_shape_error("all_gather", ins, outs, size_);
    check(wrong.empty(), wrong);
    auto o = outs;
    auto i = ins;
    return issue("all_gather", concatenated(o, i), [&] { return pg_->allgather_into_tensor_coalesced(o, i); });
  }

  WorkPtr reduce_scatter(at::Tensor out, at::Tensor in, ReduceOp op) override {
    check(in.numel() == out.numel() * size_, "reduce_scatter: input must hold size x output elements");
    c10d::ReduceScatterOptions o;
    o.reduceOp = gloo_op(op);
    return issue("reduce_scatter", {out, in}, [&] { return pg_->_reduce_scatter_base(out, in, o); },
                 averaged({out}, op));
  }

  WorkPtr reduce_scatter(const std::vector<at::Tensor>& outs, const std::vector<at::Tensor>& ins,
                         ReduceOp op) override {
    const auto wrong = grouped_shape_error("reduce_scatter", outs, ins, size_);
    check(wrong.empty(), wrong);
    c10d::ReduceScatterOptions o;
    o.reduceOp = gloo_op(op);
    auto out = outs;
    auto in = ins;
    return issue("reduce_scatter", concatenated(out, in),
                 [&] { return pg_->reduce_scatter_tensor_coalesced(out, in, o); }, averaged(out, op));
  }

  WorkPtr all_reduce(at::Tensor t, ReduceOp op) override {
    std::vector<at::Tensor> ts{t};
    c10d::AllreduceOptions o;
    o.reduceOp = gloo_op(op);
    return issue("all_reduce", ts, [&] { return pg_->allreduce(ts, o); }, averaged(ts, op));
  }

  WorkPtr broadcast(at::Tensor t, int root) override {
    std::vector<at::Tensor> ts{t};
    c10d::BroadcastOptions o;
    o.rootRank = root;
    return issue("broadcast", ts, [&] { return pg_->broadcast(ts, o); });
  }

  WorkPtr send(at::Tensor t, int peer) override { return send(std::move(t), peer, 0); }
  WorkPtr recv(at::Tensor t, int peer) override { return recv(std::move(t), peer, 0); }

  // Each exchange gets a Gloo slot of its own (tags from 1; plain send and recv keep 0), so two in
  // flight between the same ranks, as the ring's backward keeps (the next K/V block and the
  // gradients travelling with it), never share one slot's bookkeeping. The ranks of a ring call
  // send_recv alike, so their k-th calls meet on one tag.
  WorkPtr send_recv(at::Tensor out, int to, at::Tensor in, int from) override {
    const int tag = 1 + static_cast<int>(exchanges_++ % (1u << 30));
    auto sent = send(std::move(out), to, tag);
    return std::make_unique<BothWork>(std::move(sent), recv(std::move(in), from, tag));
  }

  WorkPtr all_to_all(at::Tensor out, const std::vector<int64_t>& out_rows, at::Tensor in,
                     const std::vector<int64_t>& in_rows) override {
    const auto wrong = all_to_all_error(out, out_rows, in, in_rows, size_);
    check(wrong.empty(), wrong);
    auto o = out_rows;
    auto i = in_rows;
    return issue("all_to_all", {out, in}, [&] { return pg_->alltoall_base(out, in, o, i); });
  }

  void barrier() override {
    issue("barrier", {}, [&] { return pg_->barrier(); })->wait();
  }

 private:
  std::string describe(const std::string& op) const {
    return "gloo group '" + name_ + "' (rank " + std::to_string(rank_) + " of " + std::to_string(size_) + "): " + op;
  }

  WorkPtr send(at::Tensor t, int peer, int tag) {
    std::vector<at::Tensor> ts{t};
    return issue("send to rank " + std::to_string(peer), ts, [&] { return pg_->send(ts, peer, tag); });
  }

  WorkPtr recv(at::Tensor t, int peer, int tag) {
    std::vector<at::Tensor> ts{t};
    return issue("recv from rank " + std::to_string(peer), ts, [&] { return pg_->recv(ts, peer, tag); });
  }

  void check(bool ok, const std::string& what) const {
    if (!ok) throw std::invalid_argument(describe(what));
  }

  std::function<void()> averaged(std::vector<at::Tensor> ts, ReduceOp op) const {
    if (op != ReduceOp::avg) return {};
    const double n = size_;
    return [ts, n]() mutable {
      for (auto& t : ts) t.div_(n);
    };
  }

  template <class Issue>
  WorkPtr issue(const std::string& op, const std::vector<at::Tensor>& tensors, Issue&& start,
                std::function<void()> after = {}) {
    const auto record = record_issue(recorder_.get(), name_, op, tensors);
    try {
      c10::intrusive_ptr<c10d::Work> work;
      {
        std::lock_guard<std::mutex> lock(issue_lock());
        work = start();
      }
      return std::make_unique<GlooWork>(std::move(work), describe(op), timeout_, std::move(after), recorder_, record);
    } catch (const std::exception& e) {
      if (recorder_) recorder_->ended(record, /*failed=*/true);
      if (dynamic_cast<const CommError*>(&e)) throw;
      throw CommError(describe(op) + " failed: " + runtime::error_text(e));
    }
  }

  std::string name_;
  int rank_, size_;
  std::chrono::milliseconds timeout_;
  std::shared_ptr<FlightRecorder> recorder_;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> pg_;
  uint64_t exchanges_ = 0;
};

}  // namespace

CommunicatorPtr make_gloo_communicator(Rendezvous& rdzv, const std::string& group, int rank, int size,
                                       std::shared_ptr<FlightRecorder> recorder) {
  return std::make_shared<GlooCommunicator>(rdzv, group, rank, size, std::move(recorder));
}

}  // namespace troupe::comm
