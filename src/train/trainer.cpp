#include "train/trainer.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <optional>
#include <set>
#include <filesystem>
#include <fstream>
#include <stdexcept>

#include "checkpoint/module_state.h"
#include "data/batch.h"
#include "kernels/ops.h"
#include "kernels/weight_copies.h"
#include "models/llama3/model.h"
#include <c10/cuda/CUDAFunctions.h>

#include "comm/gloo_communicator.h"
#include "comm/nccl_communicator.h"
#include "comm/replica_communicator.h"
#include "parallel/device_mesh.h"
#include "parallel/fsdp.h"
#include "parallel/pipeline_executor.h"
#include "parallel/pipeline_render.h"
#include "train/grad_norm.h"

#include "runtime/device_info.h"
#include "train/adamw.h"
#include "train/lr_schedule.h"
#include "train/unit_executor.h"

namespace troupe::train {

namespace {

AdamOptions adam_options(const config::OptimizerSection& o) {
  if (o.name != "AdamW" && o.name != "Adam")
    throw std::invalid_argument("optimizer.name: unknown '" + o.name + "' (AdamW, Adam)");
  return {o.beta1, o.beta2, o.eps, o.weight_decay, /*decoupled=*/o.name == "AdamW"};
}

std::vector<std::pair<std::string, at::Tensor>> named_parameters(torch::nn::Module& m) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& item : m.named_parameters()) out.emplace_back(item.key(), item.value());
  return out;
}

// Host memory crosses to and from a GPU only pinned: a copy from or to pageable memory makes the
// calling thread wait inside the CUDA driver, and where one process drives several GPUs that
// wait can hold up a peer rank's CUDA calls while its collective waits for this rank.
at::Tensor to_device(const at::Tensor& host, const torch::Device& dev) {
  if (!dev.is_cuda()) return host.to(dev);
  return host.pin_memory().to(dev, /*non_blocking=*/true);
}

// One copy and one wait for what a step reports (its loss and gradient norm).
at::Tensor to_host(const at::Tensor& t) {
  if (!t.is_cuda()) return t;
  auto host = at::empty(t.sizes(), t.options().device(at::kCPU).pinned_memory(true));
  host.copy_(t);
  return host;
}

// Over every pipeline stage when `stages` is given (the norm of the whole model's gradient).
at::Tensor grad_norm(const std::vector<at::Tensor>& params, comm::Communicator* stages) {
  std::vector<at::Tensor> grads;
  for (const auto& p : params)
    if (p.grad().defined()) grads.push_back(p.grad());
  return global_norm(grads, {stages});
}

at::ScalarType precision(const std::string& key, const std::string& value) {
  if (value == "bfloat16") return at::kBFloat16;
  if (value == "float32") return at::kFloat;
  throw std::invalid_argument("training." + key + ": unknown '" + value + "' (bfloat16, float32)");
}

// This rank's communicator over mesh dimension `d` (null where its degree is 1, unless the rank
// shards alone): NCCL on GPUs, Gloo on CPUs.
comm::CommunicatorPtr connect(const parallel::RankContext& rank, const parallel::DeviceMesh& mesh,
                              parallel::MeshDim d, bool cuda) {
  const bool alone = rank.shard_alone_as > 0 && d == parallel::MeshDim::dp_shard;
  if (alone && rank.shard_alone_as > 1)
    return comm::make_replica_communicator("dp_shard[replicas]", rank.shard_alone_as, cuda ? rank.local_rank : -1);
  if (mesh.dims().of(d) == 1 && !alone) return nullptr;
  if (!rank.rendezvous) throw std::logic_error("a multi-rank Trainer needs a rendezvous");
  const std::vector<parallel::MeshDim> g{d};
  const auto name = mesh.group_name(g);
  const int r = mesh.rank_in(g), n = static_cast<int>(mesh.dims().of(d));
  return cuda ? comm::make_nccl_communicator(*rank.rendezvous, name, r, n, rank.local_rank, rank.flight_recorder)
              : comm::make_gloo_communicator(*rank.rendezvous, name, r, n, rank.flight_recorder);
}

// Shards this rank's units (all of the model's, or its pipeline stages') over the data-parallel groups.
std::unique_ptr<parallel::ShardedUnits> apply_data_parallel(const config::JobConfig& cfg,
                                                            const parallel::RankContext& rank,
                                                            const parallel::DeviceMesh& mesh,
                                                            const models::llama3::Llama3Model& model,
                                                            const std::vector<models::UnitPtr>& units,
                                                            const std::vector<std::pair<std::string, at::Tensor>>& names,
                                                            bool cuda) {
  parallel::DataParallelOptions o;
  // A tied head computes with the embedding's weight: the embedding's unit is gathered with it,
  // and the weight's gradient collects both uses before the embedding's reduce-scatter.
  if (model.args().tie_embeddings) o.borrows.push_back({units.size() - 1, 0});
  o.shard = connect(rank, mesh, parallel::MeshDim::dp_shard, cuda);
  o.replicate = connect(rank, mesh, parallel::MeshDim::dp_replicate, cuda);
  o.compute_dtype = cuda ? precision("mixed_precision_param", cfg.training.mixed_precision_param) : at::kFloat;
  o.reduce_dtype = cuda ? precision("mixed_precision_reduce", cfg.training.mixed_precision_reduce) : at::kFloat;
  o.reshard = parallel::parse_reshard(cfg.parallelism.fsdp_reshard_after_forward);
  return std::make_unique<parallel::ShardedUnits>(units, names, o);
}

// The pipeline stages of the model and which of them this rank runs; the schedule is checked
// here, before any rank computes.
struct PipelinePlan {
  parallel::pp::StageSplit split;
  parallel::pp::Schedule schedule;
  std::vector<int64_t> units;  // this rank's, in stage order
};

PipelinePlan plan_pipeline(const config::JobConfig& cfg, const parallel::DeviceMesh& mesh, int64_t n_blocks,
                           int64_t microbatches) {
  const auto& p = cfg.parallelism;
  const int64_t degree = mesh.dims().of(parallel::MeshDim::pp);
  const bool interleaved = parallel::pp::is_interleaved(p.pipeline_parallel_schedule);
  PipelinePlan plan;
  plan.split = parallel::pp::split_stages(n_blocks, degree, degree * (interleaved ? 2 : 1),
                                          p.pipeline_parallel_layers_per_stage, p.pipeline_parallel_split_points);
  const auto per_rank = plan.split.stages() / degree;
  try {
    plan.schedule = parallel::pp::make_schedule(p.pipeline_parallel_schedule, static_cast<int>(degree),
                                                static_cast<int>(microbatches), static_cast<int>(per_rank));
    parallel::pp::check(plan.schedule);
  } catch (const parallel::pp::ScheduleError& e) {
    throw std::invalid_argument("parallelism.pipeline_parallel_schedule " + p.pipeline_parallel_schedule + " with " +
                                std::to_string(plan.split.stages()) + " stages over " + std::to_string(degree) +
                                " ranks and " + std::to_string(microbatches) + " micro-batches: " + e.what());
  }
  for (int s : plan.schedule.stages_of(static_cast<int>(mesh.coord(parallel::MeshDim::pp)))) {
    const auto [b, e] = plan.split.units_of(s);
    for (auto u = b; u < e; ++u) plan.units.push_back(u);
  }
  return plan;
}

std::optional<PipelinePlan> pipeline_plan(const config::JobConfig& cfg, const parallel::ParallelDims& dims, int rank,
                                          const models::llama3::ModelArgs& args) {
  if (dims.of(parallel::MeshDim::pp) == 1) return std::nullopt;
  const auto rows = cfg.parallelism.pipeline_parallel_microbatch_size;
  if (cfg.training.local_batch_size % rows != 0)
    throw std::invalid_argument("training.local_batch_size " + std::to_string(cfg.training.local_batch_size) +
                                " is not a multiple of parallelism.pipeline_parallel_microbatch_size " +
                                std::to_string(rows));
  if (args.tie_embeddings)
    throw std::invalid_argument("model.flavor " + cfg.model.flavor +
                                " ties the output to the embedding, which pipeline parallelism does not support yet");
  return plan_pipeline(cfg, parallel::DeviceMesh(dims, rank), args.n_layers, cfg.training.local_batch_size / rows);
}

// torchtitan's "op" policy: no unit is recomputed whole; the blocks recompute their element-wise
// ops instead (Llama3Model::recompute_elementwise).
bool op_policy(const config::ActivationCheckpointSection& ac) {
  return ac.mode == "selective" && ac.selective_ac_option == "op";
}

int64_t selective_every(const config::ActivationCheckpointSection& ac) {
  if (ac.mode != "selective" || op_policy(ac)) return 1;
  return std::stoll(ac.selective_ac_option);
}

}  // namespace

std::string resolve_device(const std::string& requested) {
  if (requested == "cpu") return "cpu";
  if (requested == "cuda") {
    if (!torch::cuda::is_available()) throw std::runtime_error("job.device = cuda but no CUDA device is available");
    return "cuda";
  }
  if (requested == "auto") return torch::cuda::is_available() ? "cuda" : "cpu";
  throw std::invalid_argument("job.device: unknown '" + requested + "' (auto, cpu, cuda)");
}

int local_rank_count(const config::JobConfig& cfg) {
  if (cfg.job.local_ranks > 0) return static_cast<int>(cfg.job.local_ranks);
  return resolve_device(cfg.job.device) == "cuda" ? static_cast<int>(torch::cuda::device_count()) : 1;
}

std::string rank_device(const std::string& requested, int gpu) {
  const auto device = resolve_device(requested);
  if (device != "cuda") return device;
  if (gpu >= static_cast<int>(torch::cuda::device_count()))
    throw std::runtime_error("a rank here needs cuda:" + std::to_string(gpu) + ", but this process sees " +
                             std::to_string(torch::cuda::device_count()) + " GPUs (CUDA_VISIBLE_DEVICES)");
  // The stage's thread computes on its rank's GPU from here on.
  c10::cuda::set_device(static_cast<c10::DeviceIndex>(gpu));
  return "cuda:" + std::to_string(gpu);
}

struct Trainer::Impl {
  Impl(const config::JobConfig& cfg, int64_t vocab_size, parallel::RankContext rank_context)
      : device(rank_device(cfg.job.device, rank_context.local_rank)),
        rank(std::move(rank_context)),
        dims(parallel::ParallelDims::resolve(cfg.parallelism, rank.world)),
        args(make_args(cfg, vocab_size)),
        // Built on its device (the rotary tables are plain tensors that .to() would not move).
        plan(pipeline_plan(cfg, dims, rank.rank, args)),
        // Another stage's units are built on the meta device: shapes without memory.
        model(std::make_shared<models::llama3::Llama3Model>(
            args, at::TensorOptions().dtype(at::kFloat).device(torch::Device(device)),
            plan ? std::function<bool(size_t)>([this](size_t u) {
              return std::find(plan->units.begin(), plan->units.end(), static_cast<int64_t>(u)) != plan->units.end();
            })
                 : nullptr)),
        schedule(cfg.optimizer.lr, cfg.training.steps, cfg.lr_scheduler.warmup_steps,
                 cfg.lr_scheduler.decay_ratio < 0 ? std::nullopt : std::optional<double>(cfg.lr_scheduler.decay_ratio),
                 cfg.lr_scheduler.decay_type, cfg.lr_scheduler.min_lr_factor),
        max_norm(cfg.training.max_norm) {
    // cuBLAS is deterministic only with a fixed workspace, set before its first handle; torch
    // refuses deterministic mode on CUDA without it.
    if (cfg.training.deterministic) setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8", /*overwrite=*/0);
    at::globalContext().setDeterministicAlgorithms(cfg.training.deterministic, /*warn_only=*/false);
    model->init_weights(static_cast<uint64_t>(cfg.job.seed));
    if (device.starts_with("cuda")) {
      gpu = c10::cuda::current_device();
      peak_flops = runtime::peak_bf16_flops(runtime::cuda_device_name(gpu));
      model->set_compute_dtype(precision("mixed_precision_param", cfg.training.mixed_precision_param));
      if (const auto why = kernels::prefer_cudnn_attention(torch::Device(device)); !why.empty())
        std::cerr << "troupe: cuDNN attention did not start, using flash attention: " << why.substr(0, 300) << std::endl;
    }
    flops_per_token = 6.0 * static_cast<double>(args.num_non_embedding_params()) +
                      12.0 * static_cast<double>(args.n_layers * args.n_heads * args.head_dim() * cfg.training.seq_len);
    const parallel::DeviceMesh mesh(dims, rank.rank);
    const auto global = cfg.training.global_batch_size;
    const auto per_step = cfg.training.local_batch_size * dims.dp();
    if (global > 0 && global % per_step != 0)
      throw std::invalid_argument("training.global_batch_size " + std::to_string(global) +
                                  " is not a multiple of local_batch_size x data-parallel degree = " +
                                  std::to_string(per_step));
    accumulation = global < 0 ? 1 : global / per_step;
    // The units this rank runs: every one, or its pipeline stages'.
    std::vector<int64_t> mine(model->units().size());
    for (size_t u = 0; u < mine.size(); ++u) mine[u] = static_cast<int64_t>(u);
    if (plan) {
      mine = plan->units;
      counts_tokens = mesh.coord(parallel::MeshDim::pp) == 0;
    }
    std::vector<models::UnitPtr> units;
    std::set<const void*> kept;
    for (auto u : mine) {
      units.push_back(model->units()[u]);
      for (const auto& t : units.back()->parameters()) kept.insert(t.unsafeGetTensorImpl());
    }
    for (const auto& [name, t] : named_parameters(*model)) {
      if (kept.contains(t.unsafeGetTensorImpl())) owned.emplace_back(name, t);
    }
    for (const auto& [name, t] : owned) params.push_back(t);
    auto trained = owned;
    if (dims.dp() > 1 || rank.shard_alone_as > 0) {
      sharded = apply_data_parallel(cfg, rank, mesh, *model, units, owned, gpu >= 0);
      trained.clear();
      // The first two units' updates are pieces of their own, gathered for the next forward as
      // soon as they are done (the forward's own prefetch takes over from there).
      prefetched_pieces.assign(std::min<size_t>(2, units.size()), 0);
      for (const auto& s : sharded->shards()) {
        if (s.master.numel() == 0) continue;
        trained.emplace_back(s.name, s.master);
        for (size_t k = s.unit; k < prefetched_pieces.size(); ++k) prefetched_pieces[k] = trained.size();
      }
    }
    optimizer = std::make_unique<AdamW>(std::move(trained), adam_options(cfg.optimizer));
    // Unsharded masters are cast for the forwards, and their copies kept (steps and evaluations
    // take them only then). Sharded ones arrive in the compute dtype, written by collectives
    // that ATen's version counts do not see; their copies are the casts the gathers send.
    optimizer->keep_copies(&weight_copies);
    if (sharded) sharded->keep_send_copies(weight_copies);
    const auto& ac = cfg.activation_checkpoint;
    const auto whole_plan =
        recompute_plan(model->units().size(), op_policy(ac) ? "none" : ac.mode, selective_every(ac));
    model->recompute_elementwise(op_policy(ac));
    std::vector<bool> recompute;
    for (auto u : mine) recompute.push_back(whole_plan[u]);
    executor = std::make_unique<UnitExecutor>(units, recompute, sharded.get());
    if (plan) {
      stages_comm = connect(rank, mesh, parallel::MeshDim::pp, gpu >= 0);
      const auto dtype = gpu >= 0 ? precision("mixed_precision_param", cfg.training.mixed_precision_param) : at::kFloat;
      pipeline = std::make_unique<parallel::pp::PipelineExecutor>(
          plan->schedule, stages_comm->rank(), plan->split, *executor, stages_comm,
          std::vector<int64_t>{cfg.training.local_batch_size / plan->schedule.microbatches, cfg.training.seq_len, args.dim},
          at::TensorOptions().dtype(dtype).device(torch::Device(device)));
      if (cfg.profiling.enable_profiling) {
        pipeline->record(true);
        trace_path = (std::filesystem::path(cfg.job.dump_folder) / cfg.profiling.save_traces_folder /
                      ("pipeline_rank" + std::to_string(rank.rank) + ".json")).string();
      }
    }
  }

  // A loss as fp64, known to every pipeline stage: a pipeline's losses are on its last stage
  // (`loss` undefined elsewhere), and the others receive it.
  at::Tensor on_every_stage(const at::Tensor& loss) const {
    auto out = loss.defined() ? loss.to(at::kDouble)
                              : torch::zeros({}, torch::TensorOptions().dtype(at::kDouble).device(torch::Device(device)));
    if (stages_comm) stages_comm->all_reduce(out, comm::ReduceOp::sum)->wait();
    return out;
  }

  // The recorded actions of the first traced steps, rewritten after each step so that a
  // crashed run keeps its trace.
  void save_trace() {
    constexpr int64_t kTracedSteps = 20;
    if (traced_steps >= kTracedSteps) {
      pipeline->record(false);
      return;
    }
    auto recorded = pipeline->take_recorded();
    trace.insert(trace.end(), recorded.begin(), recorded.end());
    ++traced_steps;
    parallel::pp::Timeline t;
    t.per_rank.push_back(trace);
    const auto path = std::filesystem::path(trace_path);
    std::error_code ec;
    std::filesystem::create_directories(path.parent_path(), ec);
    const auto tmp = path.string() + ".tmp";
    std::ofstream f(tmp);
    f << parallel::pp::chrome_trace(t, 1.0, "troupe pipeline", rank.rank);
    f.close();
    if (!f || ec) throw std::runtime_error("profiling: cannot write " + tmp + (ec ? ": " + ec.message() : ""));
    std::filesystem::rename(tmp, path, ec);
    if (ec) throw std::runtime_error("profiling: cannot rename " + tmp + " to " + path.string() + ": " + ec.message());
  }

  static models::llama3::ModelArgs make_args(const config::JobConfig& cfg, int64_t vocab_size) {
    if (cfg.model.name != "llama3") throw std::invalid_argument("model.name: unknown '" + cfg.model.name + "' (llama3)");
    auto a = models::llama3::flavor(cfg.model.flavor);
    a.vocab_size = vocab_size;
    a.max_seq_len = cfg.training.seq_len;
    return a;
  }

  std::string device;
  parallel::RankContext rank;
  parallel::ParallelDims dims;
  models::llama3::ModelArgs args;
  std::optional<PipelinePlan> plan;  // with pipeline parallelism
  std::shared_ptr<models::llama3::Llama3Model> model;
  LrSchedule schedule;
  double max_norm;
  std::vector<at::Tensor> params;
  // Before the optimizer, which keeps a pointer to it.
  kernels::WeightCopies weight_copies;
  std::unique_ptr<AdamW> optimizer;
  std::vector<std::pair<std::string, at::Tensor>> owned;  // this rank's parameters (its stages')
  std::unique_ptr<parallel::ShardedUnits> sharded;  // null without data parallelism
  std::vector<size_t> prefetched_pieces;  // the optimizer's pieces ending units 0 and 1 (FSDP)
  std::function<void(int64_t)> progress;
  std::function<void(const char*, int64_t)> activity;
  std::unique_ptr<UnitExecutor> executor;
  comm::CommunicatorPtr stages_comm;  // the pipeline group; null without a pipeline
  std::unique_ptr<parallel::pp::PipelineExecutor> pipeline;
  bool counts_tokens = true;  // a pipeline's first stage reports the tokens, the others 0
  std::string trace_path;     // profiling.enable_profiling: this rank's pipeline actions
  std::vector<parallel::pp::TimedAction> trace;
  int64_t traced_steps = 0;
  int64_t accumulation = 1;
  int64_t lr_offset = 0;
  int gpu = -1;  // CUDA device index, -1 on the CPU
  double peak_flops = 0, flops_per_token = 0;
};

Trainer::Trainer(const config::JobConfig& cfg, int64_t vocab_size, parallel::RankContext rank)
    : impl_(std::make_unique<Impl>(cfg, vocab_size, std::move(rank))) {}
Trainer::~Trainer() = default;

int64_t Trainer::micro_batches_per_step() const { return impl_->accumulation; }
void Trainer::on_micro_batch(std::function<void(int64_t)> progress) { impl_->progress = std::move(progress); }
void Trainer::on_pipeline_action(std::function<void(const char*, int64_t)> progress) {
  if (!impl_->pipeline) return;
  impl_->pipeline->on_action([progress = std::move(progress)](const parallel::pp::Action& a) {
    using parallel::pp::Op;
    const char* what = a.op == Op::forward ? "pipeline-F"
                       : a.op == Op::backward ? "pipeline-B"
                       : a.op == Op::backward_input ? "pipeline-I"
                       : a.op == Op::backward_weight ? "pipeline-W"
                       : parallel::pp::is_send(a.op) ? "pipeline-send"
                                                     : "pipeline-recv";
    progress(what, a.microbatch + 1);
  });
}
void Trainer::on_activity(std::function<void(const char*, int64_t)> began) {
  impl_->activity = began;
  impl_->executor->on_unit([began = std::move(began)](const char* what, size_t unit) {
    began(what, static_cast<int64_t>(unit));
  });
}
models::llama3::Llama3Model& Trainer::model() { return *impl_->model; }
std::string Trainer::device() const { return impl_->device; }

StepStats Trainer::step(int64_t step, const std::vector<std::shared_ptr<const data::Batch>>& micro_batches) {
  auto& m = *impl_;
  if (static_cast<int64_t>(micro_batches.size()) != m.accumulation)
    throw std::invalid_argument("step needs " + std::to_string(m.accumulation) + " micro-batches, got " +
                                std::to_string(micro_batches.size()));
  const auto start = std::chrono::steady_clock::now();
  const kernels::WeightCopies::Scope copies(m.sharded ? nullptr : &m.weight_copies);
  StepStats stats;
  stats.step = step;
  if (m.rank.flight_recorder) m.rank.flight_recorder->set_step(step);  // its collectives from here on
  stats.lr = m.schedule.lr(step - m.lr_offset);
  if (m.sharded) m.sharded->zero_gradients();
  else m.optimizer->zero_grad();
  const auto dev = torch::Device(m.device);
  if (m.gpu >= 0) runtime::reset_gpu_memory_peaks(m.gpu);
  // The losses stay on the device until the end so that the host never waits mid-step.
  std::vector<at::Tensor> losses;
  int64_t micro = 0;
  for (const auto& b : micro_batches) {
    if (m.progress) m.progress(++micro);
    models::UnitBatch ub{to_device(b->tokens, dev), to_device(b->targets, dev)};
    if (m.pipeline) {
      const auto n = m.pipeline->schedule().microbatches;
      const auto rows = ub.tokens.size(0) / n;
      std::vector<models::UnitBatch> parts;
      for (int64_t i = 0; i < n; ++i)
        parts.push_back({ub.tokens.narrow(0, i * rows, rows), ub.targets.narrow(0, i * rows, rows)});
      for (auto& l : m.pipeline->run(parts, 1.0 / static_cast<double>(n * m.accumulation))) losses.push_back(l);
    } else {
      losses.push_back(m.executor->forward(ub));
      m.executor->backward(1.0 / static_cast<double>(m.accumulation));
    }
    if (m.sharded) m.sharded->finish_gradients();
    if (m.counts_tokens) stats.tokens += b->tokens.numel();
  }
  // The loss is averaged before the optimizer so that its reduction does not queue behind the
  // next step's first gathers.
  auto loss = m.on_every_stage(losses.empty() ? at::Tensor() : at::stack(losses).to(at::kDouble).mean());
  if (m.sharded) m.sharded->average_over_data_parallel(loss);
  const auto norm = m.sharded ? m.sharded->grad_norm(m.stages_comm.get()) : grad_norm(m.params, m.stages_comm.get());
  if (m.activity) m.activity("optimizer", -1);
  m.optimizer->step(stats.lr, clip_divisor(norm, m.max_norm, dev), m.prefetched_pieces, [&](size_t k) {
    m.sharded->prefetch(k);
  });
  if (m.pipeline && !m.trace_path.empty()) m.save_trace();
  if (m.activity) m.activity("reading back the loss", -1);  // the host waits for the step's device work here
  const auto both = to_host(at::stack({loss.reshape({}), norm.to(at::kDouble).reshape({})}));
  stats.loss = both[0].item<double>();
  stats.grad_norm = both[1].item<double>();
  stats.compute_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  stats.model_flops = m.flops_per_token * static_cast<double>(stats.tokens);
  stats.peak_flops_per_second = m.peak_flops;
  if (m.gpu >= 0) {
    const auto peaks = runtime::gpu_memory_peaks(m.gpu);
    stats.gpu_peak_active_bytes = peaks.active_bytes;
    stats.gpu_peak_reserved_bytes = peaks.reserved_bytes;
  }
  return stats;
}

double Trainer::evaluate(const data::Batch& batch) {
  torch::NoGradGuard no_grad;
  auto& m = *impl_;
  const kernels::WeightCopies::Scope copies(m.sharded ? nullptr : &m.weight_copies);
  const auto dev = torch::Device(m.device);
  const models::UnitBatch ub{to_device(batch.tokens, dev), to_device(batch.targets, dev)};
  if (!m.sharded && !m.pipeline) return to_host(m.model->loss(ub).to(at::kDouble)).item<double>();
  at::Tensor loss;
  if (m.pipeline) {
    loss = m.on_every_stage(m.pipeline->evaluate(ub));
  } else {
    loss = m.executor->forward_only(ub).to(at::kDouble);
  }
  if (m.sharded) {
    m.sharded->release_all();
    m.sharded->average_over_data_parallel(loss);
  }
  return to_host(loss).item<double>();
}

std::vector<checkpoint::LiveTensor> Trainer::restorable_state(bool model_only) const {
  auto& m = *impl_;
  std::vector<checkpoint::LiveTensor> out;
  auto whole = [&](const std::string& name, const at::Tensor& t) {
    out.push_back({name, t, t.sizes().vec(), checkpoint::whole_box(t.sizes().vec())});
  };
  if (!m.sharded) {
    for (const auto& [name, t] : m.owned) whole("model." + name, t);
    if (!model_only)
      for (const auto& [name, t] : m.optimizer->state()) whole("optim." + name, t);
    return out;
  }
  // Sharded: the master chunks and the optimizer's state of them, boxed on dim 0.
  const auto state = model_only ? std::map<std::string, at::Tensor>{} : m.optimizer->state();
  for (const auto& s : m.sharded->shards()) {
    if (s.master.numel() == 0) continue;  // a chunk past the end of a short parameter
    const auto box = checkpoint::dim0_box(s.shape, s.index, s.parts);
    out.push_back({"model." + s.name, s.master, s.shape, box});
    for (const char* key : {"exp_avg.", "exp_avg_sq."})
      if (!model_only) out.push_back({"optim." + std::string(key) + s.name, state.at(key + s.name), s.shape, box});
  }
  if (!model_only) whole("optim.step", state.at("step"));
  return out;
}

std::vector<checkpoint::LiveTensor> Trainer::checkpoint_state(bool model_only) const {
  auto out = restorable_state(model_only);
  // Each piece once: the first replica saves the chunks, its shard rank 0 the whole tensors,
  // and of what every pipeline stage holds alike (the optimizer's step) the first stage's copy.
  const parallel::DeviceMesh mesh(impl_->dims, impl_->rank.rank);
  const bool first_replica = mesh.coord(parallel::MeshDim::dp_replicate) == 0;
  const bool first_shard = mesh.coord(parallel::MeshDim::dp_shard) == 0;
  const bool first_stage = mesh.coord(parallel::MeshDim::pp) == 0;
  std::erase_if(out, [&](const checkpoint::LiveTensor& t) {
    const bool whole = t.box == checkpoint::whole_box(t.global_shape);
    const bool every_stage = t.name == "optim.step";
    return !first_replica || (whole && impl_->sharded && !first_shard) || (every_stage && !first_stage);
  });
  return out;
}

void Trainer::load_checkpoint_state(const checkpoint::TensorMap& tensors) {
  checkpoint::TensorMap model, optim;
  for (const auto& [name, t] : tensors) {
    if (name.starts_with("model.")) model[name.substr(6)] = t;
    else if (name.starts_with("optim.")) optim[name.substr(6)] = t;
    else throw std::runtime_error("checkpoint tensor '" + name + "' belongs to neither the model nor the optimizer");
  }
  if (!model.empty()) {
    if (!impl_->sharded) {
      checkpoint::load_parameters(impl_->owned, model);
    } else {
      torch::NoGradGuard no_grad;
      for (const auto& s : impl_->sharded->shards()) {
        if (s.master.numel() == 0) continue;
        const auto it = model.find(s.name);
        if (it == model.end()) throw std::runtime_error("checkpoint has no tensor 'model." + s.name + "'");
        if (it->second.sizes() != s.master.sizes())
          throw std::runtime_error("checkpoint tensor 'model." + s.name + "' does not fit this rank's chunk");
        s.master.copy_(it->second);
      }
      impl_->sharded->release_all();  // nothing gathered may outlive the new values
    }
  }
  if (!optim.empty()) impl_->optimizer->load_state(optim);
}

void Trainer::set_lr_schedule_offset(int64_t offset) { impl_->lr_offset = offset; }
int64_t Trainer::lr_schedule_offset() const { return impl_->lr_offset; }

}  // namespace troupe::train
