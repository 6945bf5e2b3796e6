#include "parallel/pipeline_executor.h"

#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>

#include <stdexcept>

namespace troupe::parallel::pp {

namespace {

double now_us() {
  return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

template <class Map>
auto take(Map& m, const typename Map::key_type& key, const Action& a) {
  auto node = m.extract(key);
  if (node.empty()) throw std::logic_error("pipeline: " + to_string(a) + " has no input (schedule bug)");
  return std::move(node.mapped());
}

}  // namespace

PipelineExecutor::PipelineExecutor(Schedule schedule, int rank, StageSplit split, parallel::UnitExecutor& executor,
                                   comm::CommunicatorPtr comm, std::vector<int64_t> activation_shape,
                                   at::TensorOptions activation)
    : schedule_(std::move(schedule)),
      rank_(rank),
      split_(std::move(split)),
      executor_(executor),
      comm_(std::move(comm)),
      activation_shape_(std::move(activation_shape)),
      activation_(activation) {
  if (split_.stages() != schedule_.stages())
    throw std::invalid_argument("pipeline: the model has " + std::to_string(split_.stages()) + " stages, the schedule " +
                                std::to_string(schedule_.stages()));
  int64_t next = 0;
  for (int s : schedule_.stages_of(rank_)) {
    first_local_unit_[s] = next;
    const auto [b, e] = split_.units_of(s);
    next += e - b;
  }
  if (next != static_cast<int64_t>(executor_.size()))
    throw std::logic_error("pipeline: rank " + std::to_string(rank_) + " holds " + std::to_string(executor_.size()) +
                           " units, its stages have " + std::to_string(next));
}

bool PipelineExecutor::last_stage_here() const { return schedule_.stage_rank.back() == rank_; }

at::Tensor PipelineExecutor::take_input(const Action& a) {
  if (a.stage == 0) return at::Tensor();
  if (schedule_.stage_rank[a.stage - 1] == rank_) return take(outputs_, Key{a.stage - 1, a.microbatch}, a);
  auto posted = take(received_forward_, Key{a.stage, a.microbatch}, a);
  posted.work->wait();
  return posted.tensor;
}

at::Tensor PipelineExecutor::take_grad(const Action& a, double loss_scale) {
  if (a.stage == schedule_.stages() - 1) return at::full({}, loss_scale, activation_.dtype(at::kFloat));
  if (schedule_.stage_rank[a.stage + 1] == rank_) return take(input_grads_, Key{a.stage, a.microbatch}, a);
  auto posted = take(received_backward_, Key{a.stage, a.microbatch}, a);
  posted.work->wait();
  return posted.tensor;
}

void PipelineExecutor::compute(const Action& a, const std::vector<models::UnitBatch>& mbs, double loss_scale,
                               std::vector<at::Tensor>& losses) {
  const auto [begin, end] = split_.units_of(a.stage);
  const int64_t first = first_local_unit_.at(a.stage), count = end - begin;
  const auto slot = static_cast<size_t>(a.microbatch);
  // A compute's recorded start is when its input is there: waiting for it is bubble, not work.
  auto inputs_ready = [&] {
    if (!record_) return;
    // The compute stream alone: the communication stream may hold a receive posted ahead whose
    // sender is still waiting for this rank, and waiting for the whole device would deadlock.
    if (activation_.device().is_cuda()) c10::cuda::getCurrentCUDAStream().synchronize();
    compute_start_ = now_us();
  };
  switch (a.op) {
    case Op::forward: {
      at::Tensor h = take_input(a);
      inputs_ready();
      for (int64_t i = first; i < first + count; ++i) h = executor_.forward_unit(i, h, mbs.at(slot), slot);
      if (a.stage == schedule_.stages() - 1) losses.push_back(h);
      else outputs_[{a.stage, a.microbatch}] = h;
      break;
    }
    case Op::backward:
    case Op::backward_input: {
      at::Tensor g = take_grad(a, loss_scale);
      inputs_ready();
      for (int64_t i = first + count; i-- > first;)
        g = a.op == Op::backward ? executor_.backward_unit(i, g, slot) : executor_.backward_input_unit(i, g, slot);
      if (a.stage > 0) input_grads_[{a.stage - 1, a.microbatch}] = g;
      break;
    }
    case Op::backward_weight:
      inputs_ready();
      for (int64_t i = first + count; i-- > first;) executor_.backward_weight_unit(i, slot);
      break;
    default: throw std::logic_error("pipeline: not a compute");
  }
}

std::vector<at::Tensor> PipelineExecutor::run(const std::vector<models::UnitBatch>& microbatches, double loss_scale) {
  if (static_cast<int>(microbatches.size()) != schedule_.microbatches)
    throw std::invalid_argument("pipeline: the schedule runs " + std::to_string(schedule_.microbatches) +
                                " micro-batches, got " + std::to_string(microbatches.size()));
  std::vector<at::Tensor> losses;
  for (const auto& a : schedule_.actions.at(rank_)) {
    if (on_action_) on_action_(a);
    const double start = record_ ? now_us() : 0;
    switch (a.op) {
      case Op::recv_forward:
      case Op::recv_backward: {
        auto buf = at::empty(activation_shape_, activation_);
        auto& box = a.op == Op::recv_forward ? received_forward_ : received_backward_;
        auto work = comm_->recv(buf, a.peer);
        box[{a.stage, a.microbatch}] = Posted{buf, std::move(work)};
        break;
      }
      case Op::send_forward:
      case Op::send_backward: {
        auto t = a.op == Op::send_forward ? take(outputs_, Key{a.stage - 1, a.microbatch}, a)
                                          : take(input_grads_, Key{a.stage, a.microbatch}, a);
        t = t.contiguous();
        auto work = comm_->send(t, a.peer);
        sends_.push_back(Posted{t, std::move(work)});
        break;
      }
      default:
        compute(a, microbatches, loss_scale, losses);
        if (record_ && activation_.device().is_cuda()) c10::cuda::getCurrentCUDAStream().synchronize();
    }
    if (record_) recorded_.push_back({a, is_compute(a.op) ? compute_start_ : start, now_us()});
  }
  for (auto& s : sends_) s.work->wait();
  sends_.clear();
  if (!outputs_.empty() || !input_grads_.empty() || !received_forward_.empty() || !received_backward_.empty())
    throw std::logic_error("pipeline: rank " + std::to_string(rank_) + " ends the step holding undelivered data");
  return losses;
}

at::Tensor PipelineExecutor::evaluate(const models::UnitBatch& batch) {
  auto shape = activation_shape_;
  shape[0] = batch.tokens.size(0);
  at::Tensor h;
  for (int s : schedule_.stages_of(rank_)) {
    if (s > 0 && schedule_.stage_rank[s - 1] != rank_) {
      h = at::empty(shape, activation_);
      comm_->recv(h, schedule_.stage_rank[s - 1])->wait();
    }
    const auto [begin, end] = split_.units_of(s);
    const int64_t first = first_local_unit_.at(s);
    h = executor_.forward_only(first, first + (end - begin), h, batch);
    if (s + 1 < schedule_.stages() && schedule_.stage_rank[s + 1] != rank_) {
      h = h.contiguous();
      comm_->send(h, schedule_.stage_rank[s + 1])->wait();
    }
  }
  return last_stage_here() ? h : at::Tensor();
}

std::vector<TimedAction> PipelineExecutor::take_recorded() { return std::exchange(recorded_, {}); }

}  // namespace troupe::parallel::pp
