#include "parallel/rank_group.h"

#include <ATen/ATen.h>

#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace troupe::parallel {

namespace {

class PendingWork : public models::RankGroup::Transfer {
 public:
  PendingWork(comm::WorkPtr work, at::Tensor received) : work_(std::move(work)), received_(std::move(received)) {}
  at::Tensor wait() override {
    work_->wait();
    return received_;
  }

 private:
  comm::WorkPtr work_;
  at::Tensor received_;
};

// Row b of `out` and of `src` ([B, ...] each), flat: the operands of a grouped collective with an
// operation per batch row.
std::pair<std::vector<at::Tensor>, std::vector<at::Tensor>> per_row(const at::Tensor& out, const at::Tensor& src) {
  std::vector<at::Tensor> outs, ins;
  for (int64_t b = 0; b < src.size(0); ++b) {
    outs.push_back(out[b].view({-1}));
    ins.push_back(src[b].view({-1}));
  }
  return {outs, ins};
}

class CommunicatorGroup : public models::RankGroup {
 public:
  explicit CommunicatorGroup(comm::CommunicatorPtr c) : c_(std::move(c)) {}
  int rank() const override { return c_->rank(); }
  int size() const override { return c_->size(); }
  at::Tensor all_gather(const at::Tensor& in) override {
    auto src = in.contiguous();
    auto shape = src.sizes().vec();
    shape.insert(shape.begin(), size());
    auto out = at::empty(shape, src.options());
    c_->all_gather(out.view({-1}), src.view({-1}))->wait();  // the engines take flat buffers
    return out;
  }
  at::Tensor reduce_scatter(const at::Tensor& in) override {
    auto src = in.contiguous();
    auto out = at::empty(src.sizes().slice(1), src.options());
    c_->reduce_scatter(out.view({-1}), src.view({-1}), comm::ReduceOp::sum)->wait();
    return out;
  }
  // One collective per batch row, grouped: row b of the gathered [B, n*s, ...] holds the ranks'
  // parts of it in rank order, contiguous, so each lands in place (no rank-major copy).
  at::Tensor all_gather_sequence(const at::Tensor& x) override {
    auto src = x.contiguous();
    auto shape = src.sizes().vec();
    shape.at(1) *= size();
    auto out = at::empty(shape, src.options());
    const auto [outs, ins] = per_row(out, src);
    c_->all_gather(outs, ins)->wait();
    return out;
  }
  at::Tensor reduce_scatter_sequence(const at::Tensor& x) override {
    auto src = x.contiguous();
    auto shape = src.sizes().vec();
    if (shape.size() < 2 || shape[1] % size())
      throw std::invalid_argument("sequence parallelism: the sequence (" + std::to_string(shape.at(1)) +
                                  ") must split into " + std::to_string(size()) + " equal parts");
    shape[1] /= size();
    auto out = at::empty(shape, src.options());
    const auto [outs, ins] = per_row(out, src);
    c_->reduce_scatter(outs, ins, comm::ReduceOp::sum)->wait();
    return out;
  }
  void all_reduce(at::Tensor& t, bool max) override {
    if (!t.is_contiguous()) throw std::invalid_argument("rank-group all-reduce: a contiguous tensor is needed");
    c_->all_reduce(t, max ? comm::ReduceOp::max : comm::ReduceOp::sum)->wait();
  }
  std::unique_ptr<models::RankGroup::Transfer> ring_shift(const at::Tensor& t) override {
    auto out = t.contiguous();
    auto in = at::empty_like(out);
    const int n = size(), r = rank();
    auto work = c_->send_recv(out, (r + 1) % n, in, (r + n - 1) % n);
    return std::make_unique<PendingWork>(std::move(work), std::move(in));
  }
  std::unique_ptr<models::RankGroup::Transfer> start_all_to_all(const at::Tensor& in,
                                                                const std::vector<int64_t>& send_rows,
                                                                const std::vector<int64_t>& recv_rows) override {
    auto src = in.contiguous();
    auto shape = src.sizes().vec();
    shape[0] = 0;
    for (auto n : recv_rows) shape[0] += n;
    auto out = at::empty(shape, src.options());
    auto work = c_->all_to_all(out, recv_rows, src, send_rows);
    return std::make_unique<PendingWork>(std::move(work), std::move(out));
  }

 private:
  comm::CommunicatorPtr c_;
};

}  // namespace

models::RankGroupPtr make_rank_group(comm::CommunicatorPtr group) {
  return std::make_shared<CommunicatorGroup>(std::move(group));
}

}  // namespace troupe::parallel
