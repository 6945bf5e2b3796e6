#include "parallel/fsdp.h"

#include "kernels/float8.h"
#include "kernels/float8_linear.h"
#include "kernels/gradient_sink.h"
#include "kernels/weight_copies.h"

#include <torch/torch.h>

#include <algorithm>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <unordered_map>

#ifdef TROUPE_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>

#include "kernels/widen_copy.h"
#endif

namespace troupe::parallel {

namespace {

// The gathered buffers are emptied and refilled in place: every parameter view keeps its
// StorageImpl (and the autograd graph its saved tensors) while the bytes come and go.
void free_storage(const at::Tensor& t) {
  auto* s = t.storage().unsafeGetStorageImpl();
  s->set_data_ptr_noswap(at::DataPtr(nullptr, t.device()));
  s->set_nbytes(0);
}

void allocate_storage(const at::Tensor& t) {
  auto* s = t.storage().unsafeGetStorageImpl();
  const size_t bytes = static_cast<size_t>(t.numel()) * t.element_size();
  if (s->nbytes() == bytes) return;
  s->set_data_ptr_noswap(s->allocator()->allocate(bytes));
  s->set_nbytes(bytes);
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

Reshard parse_reshard(const std::string& value) {
  if (value == "default") return Reshard::default_policy;
  if (value == "always") return Reshard::always;
  if (value == "never") return Reshard::never;
  throw std::invalid_argument("parallelism.fsdp_reshard_after_forward: unknown '" + value + "' (default, always, never)");
}

struct ShardedUnits::Unit {
  struct Param {
    at::Tensor module_param;  // a view of `full` while gathered
    int64_t rows = 0, row_numel = 1, chunk_rows = 0;
    int64_t shard_offset = 0;  // in the flat shard
    size_t shard = 0;          // its ParameterShard in shards_
    // In the flat gathered buffer, where the parameter has S chunks' room (its last rows padded
    // when they do not split evenly): rank r's chunk is its rows [r * chunk_rows, ...), so the
    // gather writes every chunk straight into its place.
    int64_t full_offset = 0;
    // Where the gather puts it: in `full`, or in `full8` (an FP8 weight gathered as bytes, whose
    // chunk is quantized into `send8` at shard8_offset); the gradients keep full_offset's layout.
    bool fp8 = false;
    int64_t gather_offset = 0, shard8_offset = 0;
    int64_t chunk_numel() const { return chunk_rows * row_numel; }
    // Rank r's rows: [first, first + count), count < chunk_rows (or 0) past the end.
    std::pair<int64_t, int64_t> rows_of(int64_t r) const {
      const int64_t first = std::min(rows, r * chunk_rows);
      return {first, std::min(rows, first + chunk_rows) - first};
    }
  };
  std::vector<Param> params;
  comm::CommunicatorPtr shard;   // the group it is sharded over; null: whole on this rank
  int64_t shard_rank = 0, shard_size = 1;
  int64_t divide = 1;            // its gradients' average over the shard (and replicate) groups, divided by this too
  int64_t shard_numel = 0, full_numel = 0;
  at::Tensor master;               // fp32 [shard_numel]
  // fp32 [shard_numel], from the unit's first reduction of a step until the next step starts:
  // not held while the activations of the forward are (FSDP2 allocates its sharded gradients so).
  at::Tensor master_grad;
  at::Tensor full;                 // compute dtype [gathered_numel]; its storage comes and goes
  int64_t gathered_numel = 0;      // full_numel less the FP8 weights'
  // FP8 all-gather: the FP8 weights' gathered e4m3 bytes (storage coming and going as `full`'s),
  // their quantized chunks, and the scales of the gather in flight or done (fp32 [n, 4], one row
  // per FP8 weight in order, the scale first); `scales` ([n]) are the precomputed ones while
  // `scales_current`.
  at::Tensor full8, send8, gathered_scales, scales;
  int64_t fp8_count = 0;
  bool scales_current = false;
  // send8 holds the masters quantized with the precomputed `scales`: the gathers until the next
  // precompute (a step's forward and backward) send it as it is.
  bool send8_current = false;
  at::Tensor send;                 // compute dtype [shard_numel], with keep_send_copies
  std::vector<at::Tensor> placed;  // the master's views whose copies live in `send`
  comm::WorkPtr gather_work;
  bool ready = false, in_flight = false;
  bool even = true;                // every parameter's rows split evenly: no padding rows
  at::Tensor grad_full;            // reduce dtype [full_numel], the gathered layout: during a backward
  at::Tensor grad_out;             // while a reduction is in flight
  comm::WorkPtr reduce_work;
  bool lookup = false;             // a lookup table, not borrowed: its gradient may travel as rows
  bool by_rows = true;             // ... and the last backward sent it so (the batch shape is fixed)
  at::Tensor row_ids, row_grads;   // every rank's tokens and their gradients, while gathered
  comm::WorkPtr row_ids_work;      // (reduce_work gathers row_grads)
  bool fresh = false;              // master_grad holds none of this step's gradient yet
};

ShardedUnits::ShardedUnits(const std::vector<models::UnitPtr>& units,
                           const std::vector<std::pair<std::string, at::Tensor>>& names, DataParallelOptions options)
    : options_(std::move(options)) {
  std::unordered_map<const void*, std::string> name_of;
  for (const auto& [name, t] : names) name_of[t.unsafeGetTensorImpl()] = name;
  // A diagnostic switch (TROUPE_FSDP_GRADIENT_SINKS=0): every gradient then comes from autograd
  // and is widened into place, as before the sinks, to tell their cost or a fault apart on GPUs.
  const char* sinks_env = std::getenv("TROUPE_FSDP_GRADIENT_SINKS");
  sinks_ = !sinks_env || std::string(sinks_env) != "0";
  for (size_t m = 0; m < units.size(); ++m) {
    std::vector<at::Tensor> dense, experts;
    for (auto& p : units[m]->parameters())
      (options_.experts.parameters.contains(p.unsafeGetTensorImpl()) ? experts : dense).push_back(p);
    parts_.emplace_back();
    add_unit(dense, options_.shard, 1, m, name_of);
    first_part(m).lookup = first_part(m).shard_size > 1 && dense.size() == 1 && units[m]->lookup_table().defined();
    if (!experts.empty()) add_unit(experts, options_.experts.shard, options_.experts.divide, m, name_of);
  }
  for (const auto& [user, owner] : options_.borrows) first_part(owner).lookup = false;  // tied: dense
}

void ShardedUnits::add_unit(const std::vector<at::Tensor>& params, comm::CommunicatorPtr shard, int64_t divide,
                            size_t module, const std::unordered_map<const void*, std::string>& name_of) {
  torch::NoGradGuard no_grad;
  auto u = std::make_unique<Unit>();
  u->shard = std::move(shard);
  if (u->shard) {
    u->shard_rank = u->shard->rank();
    u->shard_size = u->shard->size();
  }
  u->divide = divide;
  const int64_t S = u->shard_size;
  int64_t full8_numel = 0, shard8_numel = 0;
  for (const auto& p : params) {
    Unit::Param q;
    q.module_param = p;
    q.rows = p.dim() == 0 ? 1 : p.size(0);
    q.row_numel = q.rows == 0 ? 0 : p.numel() / q.rows;
    q.chunk_rows = ceil_div(q.rows, S);
    q.shard_offset = u->shard_numel;
    q.full_offset = u->full_numel;
    q.fp8 = u->shard && options_.float8 && options_.float8->has(p);
    if (q.fp8) {
      q.gather_offset = full8_numel;
      q.shard8_offset = shard8_numel;
      full8_numel += S * q.chunk_numel();
      shard8_numel += q.chunk_numel();
      ++u->fp8_count;
    } else {
      q.gather_offset = u->gathered_numel;
      u->gathered_numel += S * q.chunk_numel();
    }
    u->shard_numel += q.chunk_numel();
    u->full_numel += S * q.chunk_numel();
    u->even = u->even && q.rows == S * q.chunk_rows;
    u->params.push_back(q);
  }
  const auto device = params.empty() ? at::Device(at::kCPU) : params.front().device();
  const auto f32 = at::TensorOptions().dtype(at::kFloat).device(device);
  u->master = at::zeros({u->shard_numel}, f32);
  u->full = at::empty({u->gathered_numel}, f32.dtype(options_.compute_dtype));
  if (u->fp8_count > 0) {
    u->full8 = at::empty({full8_numel}, f32.dtype(at::kByte));
    u->send8 = at::zeros({shard8_numel}, f32.dtype(at::kByte));
  }
  for (auto& q : u->params) {
    const auto& p = q.module_param;
    const auto it = name_of.find(p.unsafeGetTensorImpl());
    if (it == name_of.end()) throw std::logic_error("FSDP: a unit parameter is not among the model's parameters");
    const auto [first, mine] = q.rows_of(u->shard_rank);
    auto chunk = u->master.narrow(0, q.shard_offset, q.chunk_rows * q.row_numel).view({q.chunk_rows, q.row_numel});
    if (mine > 0) chunk.narrow(0, 0, mine).copy_(p.reshape({q.rows, q.row_numel}).narrow(0, first, mine));
    std::vector<int64_t> chunk_shape = p.sizes().vec();
    if (!chunk_shape.empty()) chunk_shape[0] = mine;
    ParameterShard piece{it->second, p.sizes().vec(), u->shard_rank, S, module,
                         u->master.narrow(0, q.shard_offset, mine * q.row_numel).view(chunk_shape)};
    q.shard = shards_.size();
    shards_.push_back(std::move(piece));
    // The module computes with a view of the gathered buffer from now on. An FP8-gathered weight
    // has no values of its own: its projection computes with the gathered bytes (provided at each
    // gather), and anything else reading it is refused by Float8Linears.
    if (q.fp8) {
      q.module_param.set_data(at::zeros({1}, u->full.options()).as_strided(p.sizes(), std::vector<int64_t>(p.dim(), 0)));
      options_.float8->gather_as_float8(q.module_param);
    } else {
      q.module_param.set_data(u->full.narrow(0, q.gather_offset, p.numel()).view(p.sizes()));
    }
    if (sinks_) gradient_sinks_.add(q.module_param);
  }
  free_storage(u->full);
  if (u->full8.defined()) free_storage(u->full8);
  parts_.at(module).push_back(units_.size());
  units_.push_back(std::move(u));
}

template <class F>
void ShardedUnits::each_part(size_t unit, F&& f) {
  for (auto k : parts_.at(unit)) f(*units_[k]);
}

void ShardedUnits::gather_unit(size_t unit) {
  each_part(unit, [&](Unit& u) { gather(u); });
}

void ShardedUnits::wait_unit(size_t unit) {
  each_part(unit, [&](Unit& u) { wait_gathered(u); });
}

void ShardedUnits::free_unit(size_t unit) {
  each_part(unit, [&](Unit& u) { free_gathered(u); });
}

ShardedUnits::~ShardedUnits() {
  for (auto& u : units_)
    for (const auto& q : u->params) gradient_sinks_.remove(q.module_param);
  // Nothing may be in flight when the buffers and the communicator go (the optimizer issues the
  // next step's first gathers, so after the last step two are). A failed peer makes a wait throw:
  // the job is ending with that error already, so teardown stops waiting and goes on.
  try {
    for (auto& u : units_) {
      if (u->gather_work) u->gather_work->wait();
      if (u->reduce_work) u->reduce_work->wait();
      if (u->row_ids_work) u->row_ids_work->wait();
    }
  } catch (const std::exception&) {
  }
}

void ShardedUnits::keep_send_copies(kernels::WeightCopies& copies) {
  if (options_.compute_dtype != at::kBFloat16) return;  // fp32 gathers send the master itself
  copies_ = &copies;
  for (auto& unit : units_) {
    auto& u = *unit;
    u.send = at::empty({u.shard_numel}, u.master.options().dtype(options_.compute_dtype));
    for (const auto& q : u.params) {
      const auto& master = shards_.at(q.shard).master;
      if (master.numel() == 0 || q.fp8) continue;  // sent as FP8, quantized at the gather
      copies.place(master, u.send.narrow(0, q.shard_offset, master.numel()).view(master.sizes()));
      u.placed.push_back(master);
    }
  }
}

at::Tensor ShardedUnits::send_buffer(Unit& u) {
  if (u.master.scalar_type() == options_.compute_dtype) return u.master;
  if (!copies_) return u.master.to(options_.compute_dtype);
  bool current = true;
  for (const auto& m : u.placed) current = current && copies_->current(m).defined();
  if (!current) {
    torch::NoGradGuard no_grad;
    u.send.copy_(u.master);
    for (const auto& m : u.placed) copies_->mark_current(m);
  }
  // The optimizer rewrites it on the compute stream only after this gather has been waited for.
  return u.send;
}

void ShardedUnits::gather(Unit& u) {
  if (u.ready || u.in_flight) return;
  allocate_storage(u.full);
  if (!u.shard) {  // unsharded (replicas only): the master's layout is the parameters'
    torch::NoGradGuard no_grad;
    u.full.copy_(u.master);
    u.ready = true;
    return;
  }
  // One all-gather per parameter, grouped into one operation, each into the parameter's place: no
  // staging buffer to copy out of (that copy was 1.3% of a step at the 1.50B shapes on one GPU).
  auto [places, pieces] = per_parameter(u, u.full, send_buffer(u));
  if (u.fp8_count > 0) {
    allocate_storage(u.full8);
    if (!u.scales_current) {
      auto amax = float8_amax(u);
      u.shard->all_reduce(amax, comm::ReduceOp::max)->wait();
      u.scales = amax.clamp_min_(kernels::kFp8AmaxFloor).div_(kernels::kFp8E4m3Max);
    }
    if (!u.send8_current) quantize_float8(u, u.scales);
    u.send8_current = u.scales_current;
    for (const auto& q : u.params) {
      if (!q.fp8 || q.chunk_numel() == 0) continue;
      places.push_back(u.full8.narrow(0, q.gather_offset, u.shard_size * q.chunk_numel()));
      pieces.push_back(u.send8.narrow(0, q.shard8_offset, q.chunk_numel()));
    }
  }
  u.gather_work = u.shard->all_gather(places, pieces);
  u.in_flight = true;
}

at::Tensor ShardedUnits::float8_amax(const Unit& u) const {
  torch::NoGradGuard no_grad;
  std::vector<at::Tensor> amax;
  for (const auto& q : u.params) {
    if (!q.fp8) continue;
    const auto& master = shards_.at(q.shard).master;
    amax.push_back(master.numel() == 0 ? at::zeros({}, master.options()) : master.abs().amax());
  }
  return at::stack(amax);
}

void ShardedUnits::quantize_float8(Unit& u, const at::Tensor& scales) {
  // saturate(x * (1 / s)) rounded to nearest even, as the FP8 kernels quantize (kernels/float8.h).
  torch::NoGradGuard no_grad;
  const auto inverse = scales.reciprocal();
  int64_t k = 0;
  for (const auto& q : u.params) {
    if (!q.fp8) continue;
    const auto& master = shards_.at(q.shard).master;
    if (master.numel() > 0)
      u.send8.narrow(0, q.shard8_offset, master.numel())
          .copy_(master.reshape({-1})
                     .mul(inverse[k])
                     .clamp_(-kernels::kFp8E4m3Max, kernels::kFp8E4m3Max)
                     .to(at::kFloat8_e4m3fn)
                     .view(at::kByte));
    ++k;
  }
  // Each scale on its own 16 bytes: cuBLASLt refuses a scale pointer that is not so aligned.
  u.gathered_scales = at::zeros({k, 4}, scales.options());
  u.gathered_scales.select(1, 0).copy_(scales);
}

void ShardedUnits::precompute_float8_scales() {
  std::vector<Unit*> units;
  std::vector<at::Tensor> amax;
  for (auto& u : units_)
    if (u->fp8_count > 0) {
      units.push_back(u.get());
      amax.push_back(float8_amax(*u));
    }
  if (units.empty()) return;
  auto all = at::cat(amax);
  options_.shard->all_reduce(all, comm::ReduceOp::max)->wait();
  all.clamp_min_(kernels::kFp8AmaxFloor).div_(kernels::kFp8E4m3Max);
  int64_t at = 0;
  for (auto* u : units) {
    u->scales = all.narrow(0, at, u->fp8_count);
    u->scales_current = true;
    u->send8_current = false;
    at += u->fp8_count;
  }
}

void ShardedUnits::wait_gathered(Unit& u) {
  if (!u.ready && !u.in_flight) gather(u);
  if (u.ready) return;
  if (u.gather_work) u.gather_work->wait();
  u.gather_work.reset();
  u.in_flight = false;
  u.ready = true;
  int64_t k = 0;
  for (const auto& q : u.params) {
    if (!q.fp8) continue;
    options_.float8->provide(q.module_param,
                             u.full8.narrow(0, q.gather_offset, q.rows * q.row_numel).view({q.rows, q.row_numel}),
                             u.gathered_scales[k++].narrow(0, 0, 1));
  }
}

void ShardedUnits::free_gathered(Unit& u) {
  if (u.in_flight) wait_gathered(u);
  if (!u.ready) return;
  for (const auto& q : u.params)
    if (q.fp8) options_.float8->withdraw(q.module_param);
  free_storage(u.full);
  if (u.full8.defined()) free_storage(u.full8);
  u.ready = false;
}

void ShardedUnits::gather_borrowed(size_t i) {
  for (const auto& [user, owner] : options_.borrows)
    if (user == i) wait_unit(owner);
}

void ShardedUnits::before_forward(size_t i) {
  gather_borrowed(i);
  wait_unit(i);
  if (i + 1 < parts_.size()) gather_unit(i + 1);  // prefetch: the next unit's gather overlaps this one's compute
}

void ShardedUnits::after_forward(size_t i) {
  const bool keep = options_.reshard == Reshard::never ||
                    (options_.reshard == Reshard::default_policy && i + 1 == parts_.size());  // its backward is next
  if (!keep) free_unit(i);
}

void ShardedUnits::before_backward(size_t i) {
  gather_borrowed(i);
  wait_unit(i);
  each_part(i, [&](Unit& u) { open_gradients(u); });
  // The previous unit's gather, ahead of its backward; a table whose gradient goes as rows needs none.
  if (i > 0 && !(first_part(i - 1).lookup && first_part(i - 1).by_rows)) gather_unit(i - 1);
}

bool ShardedUnits::backward_rows(size_t i, const at::Tensor& tokens, const at::Tensor& grad_output) {
  auto& u = first_part(i);
  if (parts_.at(i).size() != 1 || u.params.empty()) return false;
  const auto& q = u.params.front();
  const int64_t S = u.shard_size;
  // Rows, when the gathered rows are no more bytes than the table's gradient on the wire.
  const auto row_bytes = S * tokens.numel() * q.row_numel * grad_output.element_size();
  const auto table_bytes = q.rows * q.row_numel * static_cast<int64_t>(c10::elementSize(options_.reduce_dtype));
  u.by_rows = u.lookup && row_bytes <= table_bytes;
  if (!u.by_rows) return false;
  finish_unit(u);
  torch::NoGradGuard no_grad;
  const auto ids = tokens.reshape({-1}).to(at::kLong).contiguous();
  const auto rows = grad_output.reshape({-1, q.row_numel}).contiguous();
  u.row_ids = at::empty({S * ids.numel()}, ids.options());
  u.row_grads = at::empty({S * ids.numel(), q.row_numel}, rows.options());
  u.row_ids_work = u.shard->all_gather(u.row_ids, ids);
  u.reduce_work = u.shard->all_gather(u.row_grads, rows);
  free_gathered(u);
  return true;
}

at::Tensor ShardedUnits::table_gradient(Unit& u) {
  // This rank's rows [first, first + n) of the table; every other token goes to row n, which
  // embedding_dense_backward drops as padding: all ranks' rows summed in one pass, as the dense
  // backward sums one rank's, and rounded once; then the average over the ranks.
  const auto& q = u.params.front();
  const auto [first, n] = q.rows_of(u.shard_rank);
  auto local = u.row_ids - first;
  local.masked_fill_((local < 0).logical_or_(local >= n), n);
  const auto sums = at::embedding_dense_backward(u.row_grads, local, n + 1, /*padding_idx=*/n,
                                                 /*scale_grad_by_freq=*/false)
                        .narrow(0, 0, n)
                        .to(u.master.scalar_type());
  if (n == q.chunk_rows) return sums.reshape({-1}).div_(u.shard_size);  // no padding rows
  auto grad = at::zeros({u.shard_numel}, u.master.options());
  grad.narrow(0, 0, n * q.row_numel).view({n, q.row_numel}).copy_(sums).div_(u.shard_size);
  return grad;
}

std::pair<std::vector<at::Tensor>, std::vector<at::Tensor>> ShardedUnits::per_parameter(const Unit& u,
                                                                                      const at::Tensor& gathered,
                                                                                      const at::Tensor& shard) const {
  std::vector<at::Tensor> places, pieces;  // each parameter's S chunks in `gathered`, its chunk in `shard`
  const bool gathering = gathered.is_same(u.full);  // the gather's layout leaves out FP8 weights
  for (const auto& q : u.params) {
    if (q.chunk_numel() == 0 || (gathering && q.fp8)) continue;
    places.push_back(gathered.narrow(0, gathering ? q.gather_offset : q.full_offset, u.shard_size * q.chunk_numel()));
    pieces.push_back(shard.narrow(0, q.shard_offset, q.chunk_numel()));
  }
  return {places, pieces};
}

void ShardedUnits::open_gradients(Unit& u) {
  if (u.grad_full.defined()) return;  // the weight half of a split backward: already open
  // Padding rows are reduced too, so they must hold zeros.
  const auto opts = u.master.options().dtype(options_.reduce_dtype);
  u.grad_full = u.even ? at::empty({u.full_numel}, opts) : at::zeros({u.full_numel}, opts);
  if (!sinks_) return;
  for (const auto& q : u.params)
    gradient_sinks_.open(q.module_param, u.grad_full.narrow(0, q.full_offset, q.module_param.numel())
                                                    .view(q.module_param.sizes()));
}

void ShardedUnits::after_backward(size_t i) {
  each_part(i, [&](Unit& u) { reduce_gradients(u); });
}

void ShardedUnits::reduce_gradients(Unit& u) {
  finish_unit(u);  // a pipeline runs a unit's backward for several micro-batches before the step ends
  open_gradients(u);
  torch::NoGradGuard no_grad;
  // The projections wrote their gradients into grad_full (their sinks); the rest (norms, a table)
  // came from autograd in the compute dtype and are copied there, cast.
  std::vector<std::pair<at::Tensor, at::Tensor>> copies;  // (gradient, its place)
  for (auto& q : u.params) {
    const bool sunk = sinks_ && gradient_sinks_.close(q.module_param);
    auto grad = q.module_param.grad();
    q.module_param.mutable_grad() = at::Tensor();
    auto place = u.grad_full.narrow(0, q.full_offset, q.module_param.numel());
    if (!grad.defined()) {
      if (!sunk) place.zero_();  // no use reached it
    } else if (sunk) {
      place.add_(grad.reshape({-1}));  // a weight used by a projection and by something else
    } else {
      copies.emplace_back(grad.reshape({-1}), place);
    }
  }
  copy_gradients(copies);
  free_gathered(u);
  auto grad_full = std::move(u.grad_full);
  u.grad_full = at::Tensor();
  if (!u.shard) {  // one rank's chunk is the whole parameter: the gathered layout is the shard's
    u.grad_out = grad_full;
    return;
  }
  // The step's first gradient of a unit is reduced straight into the master's gradient: no
  // zeroing beforehand and no add afterwards (two passes over every shard).
  const bool direct = u.fresh && grad_full.scalar_type() == u.master.scalar_type();
  u.grad_out = direct ? master_gradient(u) : at::empty({u.shard_numel}, grad_full.options());
  // One reduce-scatter per parameter, grouped, each from the parameter's place (its rank-major
  // chunks) into its piece of the shard. The unit's whole gradient (grad_full) is not kept until
  // the step ends (for the 8B model that was the model's size in fp32): the work holds it until
  // it is waited for, the next unit's reduction on (below).
  const auto [places, pieces] = per_parameter(u, grad_full, u.grad_out);
  u.reduce_work = u.shard->reduce_scatter(pieces, places, comm::ReduceOp::avg);
  // The communicator holds grad_full until its work is waited for (CUDA: the waiting stream put
  // after it, then the block is free at once): the previous unit's, now. It has had this unit's
  // backward to finish in, so at most two whole gradients are held.
  if (reducing_ && reducing_ != &u) finish_unit(*reducing_);
  reducing_ = &u;
}

void ShardedUnits::copy_gradients(const std::vector<std::pair<at::Tensor, at::Tensor>>& copies) const {
#ifdef TROUPE_WITH_CUDA
  // bf16 gradients into fp32 places (the default mixed precision): Troupe's kernel, one launch.
  bool widen = !copies.empty();
  for (const auto& [grad, place] : copies)
    widen = widen && place.is_cuda() && place.scalar_type() == at::kFloat && grad.scalar_type() == at::kBFloat16 &&
            grad.is_contiguous();
  if (widen) {
    std::vector<kernels::WidenPiece> pieces;
    for (const auto& [grad, place] : copies)
      pieces.push_back({grad.const_data_ptr(), place.data_ptr<float>(), grad.numel(), place.numel()});
    kernels::widen_pieces(pieces.data(), pieces.size(),
                          at::cuda::getCurrentCUDAStream(copies.front().second.get_device()).stream());
    return;
  }
#endif
  for (const auto& [grad, place] : copies) place.copy_(grad);
}

at::Tensor& ShardedUnits::master_gradient(Unit& u) {
  if (u.master_grad.defined()) return u.master_grad;
  // A step's first write overwrites all of it; an add (no zero_gradients before) needs zeros.
  u.master_grad = u.fresh ? at::empty({u.shard_numel}, u.master.options()) : at::zeros({u.shard_numel}, u.master.options());
  for (const auto& q : u.params) {
    auto& master = shards_.at(q.shard).master;
    master.mutable_grad() = u.master_grad.narrow(0, q.shard_offset, master.numel()).view(master.sizes());
  }
  return u.master_grad;
}

void ShardedUnits::zero_gradients() {
  reducing_ = nullptr;
  for (auto& u : units_) {
    u->fresh = true;
    // The last step's, read by its optimizer (queued on this stream before anything reuses them).
    u->master_grad = at::Tensor();
    for (const auto& q : u->params) shards_.at(q.shard).master.mutable_grad() = at::Tensor();
    // Left open only by a backward that threw: its partial gradients must not leak into this step.
    if (!u->grad_full.defined()) continue;
    if (sinks_)
      for (const auto& q : u->params) gradient_sinks_.close(q.module_param);
    u->grad_full = at::Tensor();
  }
}

void ShardedUnits::finish_unit(Unit& u) {
  if (u.row_grads.defined()) {
    u.row_ids_work->wait();
    u.reduce_work->wait();
    u.row_ids_work.reset();
    u.reduce_work.reset();
    u.grad_out = table_gradient(u);
    u.row_ids = at::Tensor();
    u.row_grads = at::Tensor();
  }
  if (!u.grad_out.defined()) return;
  if (u.reduce_work) u.reduce_work->wait();
  u.reduce_work.reset();
  if (options_.replicate) options_.replicate->all_reduce(u.grad_out, comm::ReduceOp::avg)->wait();
  if (u.divide != 1) u.grad_out.div_(static_cast<double>(u.divide));
  if (!u.grad_out.is_same(u.master_grad)) {
    auto& grad = master_gradient(u);
    if (u.fresh) grad.copy_(u.grad_out);
    else grad.add_(u.grad_out);
  }
  u.fresh = false;
  u.grad_out = at::Tensor();
}

void ShardedUnits::finish_gradients() {
  reducing_ = nullptr;
  for (auto& u : units_) {
    finish_unit(*u);
    if (u->fresh) master_gradient(*u).zero_();  // no backward reached it
    u->fresh = false;
  }
}

void ShardedUnits::release_all() {
  for (auto& u : units_) {
    free_gathered(*u);
    u->scales_current = u->send8_current = false;  // a restore writes the masters
  }
}

void ShardedUnits::average_over_data_parallel(at::Tensor& scalar) {
  if (options_.shard) options_.shard->all_reduce(scalar, comm::ReduceOp::avg)->wait();
  if (options_.replicate) options_.replicate->all_reduce(scalar, comm::ReduceOp::avg)->wait();
}

}  // namespace troupe::parallel
