#include "train/trainer.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <iostream>
#include <map>
#include <optional>
#include <set>
#include <filesystem>
#include <fstream>
#include <stdexcept>

#include "data/batch.h"
#include "kernels/attention.h"
#include "kernels/float8_linear.h"
#include "kernels/ops.h"
#include "kernels/weight_copies.h"
#include "models/model.h"
#include <c10/cuda/CUDAFunctions.h>

#include "parallel/context_parallel.h"
#include "parallel/device_mesh.h"
#include "parallel/parallelize.h"
#include "parallel/pipeline_render.h"
#include "parallel/grad_norm.h"
#include "parallel/tensor_parallel.h"

#include "runtime/device_info.h"
#include "runtime/process_memory.h"
#include "train/adamw.h"
#include "train/float8_converter.h"
#include "train/lr_schedule.h"

namespace troupe::train {

namespace {

AdamOptions adam_options(const config::OptimizerSection& o) {
  if (o.name != "AdamW" && o.name != "Adam")
    throw std::invalid_argument("optimizer.name: unknown '" + o.name + "' (AdamW, Adam)");
  return {o.beta1, o.beta2, o.eps, o.weight_decay, /*decoupled=*/o.name == "AdamW"};
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

at::ScalarType precision(const std::string& key, const std::string& value) {
  if (value == "bfloat16") return at::kBFloat16;
  if (value == "float32") return at::kFloat;
  throw std::invalid_argument("training." + key + ": unknown '" + value + "' (bfloat16, float32)");
}

}  // namespace

void check_layout(const config::JobConfig& cfg, int world, const models::Architecture& model) {
  const auto dims = parallel::ParallelDims::resolve(cfg.parallelism, world);
  parallel::plan_pipeline(cfg, dims, 0, model);
  const auto global = cfg.training.global_batch_size;
  const auto per_step = cfg.training.local_batch_size * dims.dp();
  if (global > 0 && global % per_step != 0)
    throw std::invalid_argument("training.global_batch_size " + std::to_string(global) +
                                " is not a multiple of local_batch_size x data-parallel degree = " +
                                std::to_string(per_step));
  adam_options(cfg.optimizer);
  const auto seq = cfg.training.seq_len;
  const int64_t tp = dims.of(parallel::MeshDim::tp), cp = dims.of(parallel::MeshDim::cp);
  if (const auto problem = model.tensor_parallel_problem(tp); !problem.empty()) throw std::invalid_argument(problem);
  if (const auto problem = model.context_parallel_problem(cp); !problem.empty()) throw std::invalid_argument(problem);
  if (const auto problem = model.expert_parallel_problem(dims.of(parallel::MeshDim::ep)); !problem.empty())
    throw std::invalid_argument(problem);
  // With tp, the routed experts are whole and each tp rank routes its own part of the sequence
  // (torchtitan's etp 1): an ep group holds whole tp groups.
  if (const auto ep = dims.of(parallel::MeshDim::ep); ep > 1 && tp > 1 && ep % tp)
    throw std::invalid_argument("parallelism.expert_parallel_degree = " + std::to_string(ep) +
                                " must be a multiple of parallelism.tensor_parallel_degree = " + std::to_string(tp) +
                                " (the routed experts are whole and each tp rank routes its own part of the sequence)");
  models::parse_rotate_method(cfg.parallelism.context_parallel_rotate_method);
  if (cp > 1 && seq % (2 * cp))
    throw std::invalid_argument("training.seq_len = " + std::to_string(seq) + " must be a multiple of 2 x "
                                "parallelism.context_parallel_degree = " + std::to_string(2 * cp) +
                                " (each cp rank holds two equal chunks of every sequence)");
  if ((seq / cp) % tp)
    throw std::invalid_argument("training.seq_len = " + std::to_string(seq) + " must be a multiple of " +
                                (cp > 1 ? "parallelism.context_parallel_degree x " : "") +
                                "parallelism.tensor_parallel_degree = " + std::to_string(cp * tp) +
                                " (sequence parallelism gives each rank an equal part)");
  if (seq > model.max_seq_len())
    throw std::invalid_argument("training.seq_len = " + std::to_string(seq) + " is more than " + model.family() +
                                "'s longest sequence, " + std::to_string(model.max_seq_len()) + " positions");
  // A floor on memory, not an estimate: each block keeps at least its input for the backward pass.
  const auto device = resolve_device(cfg.job.device);
  const int64_t pp = dims.of(parallel::MeshDim::pp);
  const int64_t rows = pp > 1 ? cfg.parallelism.pipeline_parallel_microbatch_size : cfg.training.local_batch_size;
  const int64_t blocks = (model.n_blocks() + pp - 1) / pp;
  const double element = device == "cuda" && cfg.training.mixed_precision_param == "bfloat16" ? 2 : 4;
  const double kept = static_cast<double>(blocks * rows) * static_cast<double>(seq) *
                      static_cast<double>(model.hidden_dim()) * element;
  const double available = static_cast<double>(runtime::device_memory_bytes(device));
  if (available > 0 && kept > available) {
    char sizes[96];
    std::snprintf(sizes, sizeof sizes, "%.1f GiB, more than the %.1f GiB of this %s", kept / (1 << 30),
                  available / (1 << 30), device == "cuda" ? "GPU" : "machine");
    throw std::invalid_argument("training.seq_len = " + std::to_string(seq) + " with " +
                                (pp > 1 ? "parallelism.pipeline_parallel_microbatch_size = "
                                        : "training.local_batch_size = ") +
                                std::to_string(rows) + ": the activations the blocks keep for the backward pass alone "
                                "need " + sizes + "; lower either");
  }
  precision("mixed_precision_param", cfg.training.mixed_precision_param);
  precision("mixed_precision_reduce", cfg.training.mixed_precision_reduce);
  if (converts_float8(cfg)) {
    const auto recipe = kernels::parse_float8_recipe(cfg.float8.recipe_name);
    if (const auto problem = kernels::float8_device_problem(device == "cuda" ? "cuda:0" : device, recipe); !problem.empty())
      throw std::invalid_argument("model.converters has \"quantize.linear.float8\": " + problem);
    if (recipe == kernels::Float8Recipe::blockwise && (rows * seq) % 4)
      throw std::invalid_argument("quantize.linear.float8.recipe_name = blockwise needs the tokens of a micro-batch "
                                  "(rows x training.seq_len = " + std::to_string(rows * seq) + ") to be a multiple of 4");
  }
}

bool converts_float8(const config::JobConfig& cfg) {
  return std::ranges::find(cfg.model.converters, "quantize.linear.float8") != cfg.model.converters.end();
}

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
  // Mesh, model, parallelize, optimizer: as torchtitan's trainer reads.
  Impl(const config::JobConfig& cfg, models::ArchitecturePtr architecture, parallel::RankContext rank_context)
      : device(rank_device(cfg.job.device, rank_context.local_rank)),
        rank(std::move(rank_context)),
        dims(parallel::ParallelDims::resolve(cfg.parallelism, rank.world)),
        arch(std::move(architecture)),
        plan(parallel::plan_pipeline(cfg, dims, rank.rank, *arch)),
        // Built on its device (the rotary tables are plain tensors that .to() would not move).
        // Another stage's units are built on the meta device: shapes without memory.
        model(arch->build(at::TensorOptions().dtype(at::kFloat).device(torch::Device(device)), cfg.training.seq_len,
                          plan ? std::function<bool(size_t)>([this](size_t u) {
                            return std::find(plan->units.begin(), plan->units.end(), static_cast<int64_t>(u)) !=
                                   plan->units.end();
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
    auto compute = at::kFloat, reduce = at::kFloat;
    if (device.starts_with("cuda")) {
      gpu = c10::cuda::current_device();
      peak_flops = runtime::peak_bf16_flops(runtime::cuda_device_name(gpu));
      compute = precision("mixed_precision_param", cfg.training.mixed_precision_param);
      reduce = precision("mixed_precision_reduce", cfg.training.mixed_precision_reduce);
      model->set_compute_dtype(compute);
      if (const auto why = kernels::prefer_cudnn_attention(torch::Device(device)); !why.empty())
        std::cerr << "troupe: cuDNN attention did not start, using flash attention: " << why.substr(0, 300) << std::endl;
    }
    flops_per_token = arch->flops_per_token(cfg.training.seq_len);
    check_layout(cfg, rank.world, *arch);
    if (converts_float8(cfg)) {
      float8 = std::make_unique<kernels::Float8Linears>(kernels::parse_float8_recipe(cfg.float8.recipe_name));
      const auto conversion = convert_to_float8(*model, cfg.float8, *float8);
      float8_precompute = cfg.float8.enable_fsdp_float8_all_gather && cfg.float8.precompute_float8_dynamic_scale_for_fsdp;
      if (rank.rank == 0) std::cerr << "troupe: " << conversion.describe(float8->recipe()) << std::endl;
    }
    const auto global = cfg.training.global_batch_size;
    accumulation = global < 0 ? 1 : global / (cfg.training.local_batch_size * dims.dp());
    // A pipeline's first stage and a tensor-parallel group's first rank count the tokens, once.
    const parallel::DeviceMesh mesh(dims, rank.rank);
    counts_tokens = mesh.coord(parallel::MeshDim::pp) == 0 && mesh.coord(parallel::MeshDim::tp) == 0 &&
                    mesh.coord(parallel::MeshDim::cp) == 0;
    cp_rank = mesh.coord(parallel::MeshDim::cp);
    block_causal = cfg.training.attention_mask == "block_causal";
    ring_attention = models::parse_rotate_method(cfg.parallelism.context_parallel_rotate_method) == models::RotateMethod::ring;
    cp_layout = parallel::context_parallel_layout(cfg.training.seq_len, dims.of(parallel::MeshDim::cp));

    parallelized = parallel::parallelize(*model, *arch, plan, cfg, rank, dims, device, compute, reduce);

    std::vector<std::pair<std::string, at::Tensor>> trained;
    for (const auto& t : parallelized.trained) trained.emplace_back(t.name, t.tensor);
    if (parallelized.sharded) {
      // The first two units' updates are pieces of their own, gathered for the next forward as
      // soon as they are done (the forward's own prefetch takes over from there).
      prefetched_pieces.assign(std::min<size_t>(2, parallelized.units.size()), 0);
      for (size_t i = 0; i < parallelized.trained.size(); ++i)
        for (size_t k = parallelized.trained[i].unit; k < prefetched_pieces.size(); ++k) prefetched_pieces[k] = i + 1;
    }
    optimizer = std::make_unique<AdamW>(std::move(trained), adam_options(cfg.optimizer));
    // Unsharded masters are cast for the forwards, and their copies kept (steps and evaluations
    // take them only then). Sharded ones arrive in the compute dtype, written by collectives
    // that ATen's version counts do not see; their copies are the casts the gathers send.
    optimizer->keep_copies(&weight_copies);
    if (parallelized.sharded) parallelized.sharded->keep_send_copies(weight_copies);
    else model->weight_services().copies = &weight_copies;
    if (parallelized.pipeline && cfg.profiling.enable_profiling) {
      parallelized.pipeline->record(true);
      trace_path = (std::filesystem::path(cfg.job.dump_folder) / cfg.profiling.save_traces_folder /
                    ("pipeline_rank" + std::to_string(rank.rank) + ".json")).string();
    }
  }

  // The norm of the whole model's gradient: this rank's trained tensors, summed over the groups
  // they are split across (their placements) and over the pipeline's stages.
  at::Tensor grad_norm() const {
    // Under tensor parallelism the norm is summed over the tp group too: what several tp ranks
    // hold alike counts once (its square a share on each of them).
    std::map<const void*, double> share;
    for (const auto& t : parallelized.tp_replicated)
      share[t.tensor.unsafeGetTensorImpl()] =
          1.0 / std::sqrt(static_cast<double>(parallelized.tp->size() / t.parts));
    std::vector<at::Tensor> grads;
    for (const auto& t : parallelized.trained) {
      if (!t.tensor.grad().defined()) continue;
      const auto it = share.find(t.tensor.unsafeGetTensorImpl());
      grads.push_back(it == share.end() ? t.tensor.grad() : t.tensor.grad() * it->second);
    }
    std::vector<comm::Communicator*> groups;
    for (const auto& g : parallelized.norm_groups) groups.push_back(g.get());
    groups.push_back(parallelized.stages.get());
    return parallel::global_norm(grads, groups);
  }

  // A loss as fp64, known to every pipeline stage: a pipeline's losses are on its last stage
  // (`loss` undefined elsewhere), and the others receive it.
  at::Tensor on_every_stage(const at::Tensor& loss) const {
    auto out = loss.defined() ? loss.to(at::kDouble)
                              : torch::zeros({}, torch::TensorOptions().dtype(at::kDouble).device(torch::Device(device)));
    if (parallelized.stages) parallelized.stages->all_reduce(out, comm::ReduceOp::sum)->wait();
    return out;
  }

  // The recorded actions of the first traced steps, rewritten after each step so that a
  // crashed run keeps its trace; returns this step's (the inspection page's timeline).
  std::vector<PipelineSpan> save_trace() {
    constexpr int64_t kTracedSteps = 20;
    if (traced_steps >= kTracedSteps) {
      parallelized.pipeline->record(false);
      return {};
    }
    auto recorded = parallelized.pipeline->take_recorded();
    std::vector<PipelineSpan> spans;
    for (const auto& r : recorded)
      spans.push_back({parallel::pp::op_name(r.action.op), r.action.stage, r.action.microbatch, 1e-3 * r.start, 1e-3 * r.end});
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
    return spans;
  }

  std::string device;
  parallel::RankContext rank;
  parallel::ParallelDims dims;
  models::ArchitecturePtr arch;
  std::optional<parallel::PipelinePlan> plan;  // with pipeline parallelism
  std::shared_ptr<models::Model> model;
  std::unique_ptr<kernels::Float8Linears> float8;  // with model.converters' FP8; the model's services point here
  bool float8_precompute = false;  // FSDP's FP8 all-gather scales, computed after each optimizer step
  LrSchedule schedule;
  double max_norm;
  // Before the optimizer and the sharded units, which keep pointers to it.
  kernels::WeightCopies weight_copies;
  parallel::ParallelModel parallelized;
  std::unique_ptr<AdamW> optimizer;
  std::vector<size_t> prefetched_pieces;  // the optimizer's pieces ending units 0 and 1 (FSDP)
  std::function<void(int64_t)> progress;
  std::function<void(const char*, int64_t)> activity;
  models::AuxValues aux;  // the running step's side channel
  bool counts_tokens = true;  // one rank of each data-parallel replica reports the tokens, the others 0
  bool block_causal = false;  // training.attention_mask: documents attend within themselves
  int64_t cp_rank = 0;        // this rank's coordinate in the context-parallel group
  bool ring_attention = false;  // context_parallel_rotate_method = ring
  parallel::ContextParallelLayout cp_layout;  // who holds which positions of a training.seq_len sequence

  // What the units read of rows [first, first + rows) of a batch: on the device, with the
  // documents under block_causal, and cut to this rank's part of the sequences under context
  // parallelism.
  models::UnitBatch unit_batch(const data::Batch& b, int64_t first, int64_t rows, models::AuxValues* aux_values,
                               double loss_scale) const {
    const auto dev = torch::Device(device);
    models::UnitBatch ub{.tokens = to_device(b.tokens.narrow(0, first, rows), dev),
                         .targets = to_device(b.targets.narrow(0, first, rows), dev),
                         .aux = aux_values,
                         .loss_scale = loss_scale};
    const auto cp = dims.of(parallel::MeshDim::cp);
    at::Tensor documents;
    if (block_causal) {
      if (!b.documents.defined())
        throw std::invalid_argument("training.attention_mask = \"block_causal\" needs documents, but the tokenizer "
                                    "(model.tokenizer_path) has no end-of-sequence token to end them at");
      documents = b.documents.narrow(0, first, rows);
      ub.documents = to_device(documents, dev);
    }
    const bool segmented = dev.is_cuda() && (block_causal || cp > 1);
    if (!segmented && cp == 1) return ub;
    // The job's layout, made once; a batch of another length gets its own.
    const auto seq = b.tokens.size(1);
    const auto layout = seq == cp_layout.rank_major.numel() ? cp_layout : parallel::context_parallel_layout(seq, cp);
    // Flash attention's segments, from the host's positions and documents: for block_causal, and
    // for context parallelism's keys (all gathered, or each rank's block of the ring).
    if (segmented) {
      const auto& mine = layout.positions[static_cast<size_t>(cp_rank)];
      auto add = [&](const at::Tensor& keys) {
        ub.attention_segments.push_back(
            kernels::attention_segments(kernels::AttentionMask::of(mine, keys, documents), rows).to(dev));
      };
      if (cp > 1 && ring_attention) {
        for (const auto& keys : layout.positions) add(keys);
      } else {
        add(layout.rank_major);
      }
      if (cp > 1 && !ring_attention && !block_causal) {
        ub.query_runs = kernels::query_runs(mine, seq);
        ub.key_order = at::argsort(layout.rank_major).to(dev);
      }
    }
    return cp > 1 ? parallel::context_parallel_part(ub, layout, cp_rank) : ub;
  }
  std::string trace_path;     // profiling.enable_profiling: this rank's pipeline actions
  std::vector<parallel::pp::TimedAction> trace;
  int64_t traced_steps = 0;
  int64_t accumulation = 1;
  int64_t lr_offset = 0;
  int gpu = -1;  // CUDA device index, -1 on the CPU
  double peak_flops = 0, flops_per_token = 0;

  // Hands the model the step's loads (tokens per expert), averaged over the data-parallel ranks
  // in one collective, so that every replica moves its expert biases alike.
  void balance_experts() {
    if (!model->balances_experts()) return;
    std::vector<std::pair<std::string, at::Tensor>> loads;
    for (const auto& [name, v] : aux.values())
      if (name.ends_with(".tokens_per_expert")) loads.emplace_back(name, v);
    if (loads.empty()) return;
    models::AuxValues step;
    std::vector<at::Tensor> parts;
    for (const auto& [name, v] : loads) parts.push_back(v.reshape({-1}));
    auto all = at::cat(parts);
    if (parallelized.sharded) parallelized.sharded->average_over_data_parallel(all);
    // Routing their own parts of the sequence (with ep), tp ranks see different loads.
    if (parallelized.tp && parallelized.ep) parallelized.tp->all_reduce(all, comm::ReduceOp::avg)->wait();
    int64_t offset = 0;
    for (const auto& [name, v] : loads) {
      step.add(name, all.narrow(0, offset, v.numel()).view_as(v));
      offset += v.numel();
    }
    model->balance_experts(step);
  }
};

Trainer::Trainer(const config::JobConfig& cfg, models::ArchitecturePtr architecture, parallel::RankContext rank)
    : impl_(std::make_unique<Impl>(cfg, std::move(architecture), std::move(rank))) {}
Trainer::~Trainer() = default;

int64_t Trainer::micro_batches_per_step() const { return impl_->accumulation; }
void Trainer::on_micro_batch(std::function<void(int64_t)> progress) { impl_->progress = std::move(progress); }
void Trainer::on_pipeline_action(std::function<void(const char*, int64_t)> progress) {
  if (!impl_->parallelized.pipeline) return;
  impl_->parallelized.pipeline->on_action([progress = std::move(progress)](const parallel::pp::Action& a) {
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
  impl_->parallelized.executor->on_unit([began = std::move(began)](const char* what, size_t unit) {
    began(what, static_cast<int64_t>(unit));
  });
}
models::Model& Trainer::model() { return *impl_->model; }
const models::Architecture& Trainer::architecture() const { return *impl_->arch; }
std::string Trainer::device() const { return impl_->device; }

StepStats Trainer::step(int64_t step, const std::vector<std::shared_ptr<const data::Batch>>& micro_batches) {
  auto& m = *impl_;
  if (static_cast<int64_t>(micro_batches.size()) != m.accumulation)
    throw std::invalid_argument("step needs " + std::to_string(m.accumulation) + " micro-batches, got " +
                                std::to_string(micro_batches.size()));
  const auto start = std::chrono::steady_clock::now();
  const auto waited = [&] { return m.rank.flight_recorder ? m.rank.flight_recorder->waited_seconds() : 0.0; };
  const double waited_before = waited();
  StepStats stats;
  stats.step = step;
  stats.rank = m.rank.rank;
  if (m.rank.flight_recorder) m.rank.flight_recorder->set_step(step);  // its collectives from here on
  stats.lr = m.schedule.lr(step - m.lr_offset);
  m.aux.clear();
  if (m.parallelized.sharded) m.parallelized.sharded->zero_gradients();
  else m.optimizer->zero_grad();
  const auto dev = torch::Device(m.device);
  if (m.gpu >= 0) runtime::reset_gpu_memory_peaks(m.gpu);
  // The losses stay on the device until the end so that the host never waits mid-step.
  std::vector<at::Tensor> losses;
  int64_t micro = 0;
  for (const auto& b : micro_batches) {
    if (m.progress) m.progress(++micro);
    const auto batch_rows = b->tokens.size(0);
    if (m.parallelized.pipeline) {
      const auto n = m.parallelized.pipeline->schedule().microbatches;
      const auto rows = batch_rows / n;
      std::vector<models::UnitBatch> parts;
      for (int64_t i = 0; i < n; ++i)
        parts.push_back(m.unit_batch(*b, i * rows, rows, &m.aux, 1.0 / static_cast<double>(n * m.accumulation)));
      for (auto& l : m.parallelized.pipeline->run(parts, parts.front().loss_scale)) losses.push_back(l);
    } else {
      losses.push_back(m.parallelized.executor->forward(
          m.unit_batch(*b, 0, batch_rows, &m.aux, 1.0 / static_cast<double>(m.accumulation))));
      m.parallelized.executor->backward(1.0 / static_cast<double>(m.accumulation));
    }
    if (m.parallelized.sharded) m.parallelized.sharded->finish_gradients();
    if (m.counts_tokens) stats.tokens += b->tokens.numel();
  }
  // The loss is averaged before the optimizer so that its reduction does not queue behind the
  // next step's first gathers.
  auto loss = m.on_every_stage(losses.empty() ? at::Tensor() : at::stack(losses).to(at::kDouble).mean());
  if (m.parallelized.sharded) m.parallelized.sharded->average_over_data_parallel(loss);
  if (m.parallelized.tp) parallel::sum_partial_gradients(m.parallelized.tp_replicated, *m.parallelized.tp);
  const auto norm = m.grad_norm();
  if (m.activity) m.activity("optimizer", -1);
  const auto optimizer_start = std::chrono::steady_clock::now();
  const auto host_waited = [&] { return m.rank.flight_recorder ? m.rank.flight_recorder->host_waited_seconds() : 0.0; };
  const double waited_before_optimizer = host_waited();
  // FP8 all-gather with precomputed scales: every unit's scale needs every master updated, so the
  // first units are gathered after the precompute rather than during the update.
  const bool precompute = m.parallelized.sharded && m.float8_precompute;
  m.optimizer->step(stats.lr, parallel::clip_divisor(norm, m.max_norm, dev),
                    precompute ? std::vector<size_t>{} : m.prefetched_pieces,
                    [&](size_t k) { m.parallelized.sharded->prefetch(k); });
  if (precompute) m.parallelized.sharded->precompute_float8_scales();
  m.balance_experts();
  stats.optimizer_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - optimizer_start).count() -
                            (host_waited() - waited_before_optimizer);
  if (m.parallelized.pipeline && !m.trace_path.empty()) stats.pipeline = m.save_trace();
  if (m.activity) m.activity("reading back the loss", -1);  // the host waits for the step's device work here
  const auto both = to_host(at::stack({loss.reshape({}), norm.to(at::kDouble).reshape({})}));
  stats.loss = both[0].item<double>();
  stats.grad_norm = both[1].item<double>();
  for (const auto& [name, sum] : m.aux.values()) {
    const auto summed = sum.to(at::kDouble).cpu().contiguous();  // one copy to the host per value
    const auto per_micro = summed / static_cast<double>(micro);
    if (per_micro.numel() == 1) {
      stats.aux.emplace_back(name, per_micro.item<double>());
      continue;
    }
    // A count per member (tokens per expert): its largest, its mean, and the largest's share.
    const double most = per_micro.max().item<double>(), total = per_micro.sum().item<double>();
    stats.aux.emplace_back(name + ".max", most);
    stats.aux.emplace_back(name + ".mean", total / static_cast<double>(per_micro.numel()));
    stats.aux.emplace_back(name + ".busiest_share", total > 0 ? most / total : 0.0);
    stats.aux_counts.emplace_back(name, std::vector<double>(summed.data_ptr<double>(), summed.data_ptr<double>() + summed.numel()));
  }
  stats.compute_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  stats.comm_wait_seconds = waited() - waited_before;
  stats.rss_bytes = static_cast<int64_t>(runtime::resident_bytes());
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
  const auto ub = m.unit_batch(batch, 0, batch.tokens.size(0), nullptr, 1.0);
  if (!m.parallelized.sharded && !m.parallelized.pipeline) return to_host(m.model->loss(ub).to(at::kDouble)).item<double>();
  at::Tensor loss;
  if (m.parallelized.pipeline) {
    loss = m.on_every_stage(m.parallelized.pipeline->evaluate(ub));
  } else {
    loss = m.parallelized.executor->forward_only(ub).to(at::kDouble);
  }
  if (m.parallelized.sharded) {
    m.parallelized.sharded->release_all();
    m.parallelized.sharded->average_over_data_parallel(loss);
  }
  return to_host(loss).item<double>();
}

std::vector<checkpoint::LiveTensor> Trainer::restorable_state(bool model_only) const {
  // Each trained tensor and its optimizer state where its placement puts them, and the
  // optimizer's step, which every rank holds whole.
  const auto state = model_only ? std::map<std::string, at::Tensor>{} : impl_->optimizer->state();
  std::vector<checkpoint::LiveTensor> out;
  for (const auto& t : impl_->parallelized.trained) {
    const auto box = t.placement.box();
    out.push_back({"model." + t.name, t.tensor, t.placement.global_shape, box});
    if (model_only) continue;
    for (const char* key : {"exp_avg.", "exp_avg_sq."})
      out.push_back({"optim." + std::string(key) + t.name, state.at(key + t.name), t.placement.global_shape, box});
  }
  for (const auto& [name, t] : impl_->parallelized.buffers)
    out.push_back({"buffer." + name, t, t.sizes().vec(), checkpoint::whole_box(t.sizes().vec())});
  if (!model_only) {
    const auto& step = state.at("step");
    out.push_back({"optim.step", step, step.sizes().vec(), checkpoint::whole_box(step.sizes().vec())});
  }
  return out;
}

std::vector<checkpoint::LiveTensor> Trainer::checkpoint_state(bool model_only) const {
  // Each piece once: of the ranks holding one, the one its placement names; of what every
  // pipeline stage holds alike (the optimizer's step), the first stage's copy.
  const parallel::DeviceMesh mesh(impl_->dims, impl_->rank.rank);
  std::map<std::string, const parallel::Placement*> placements;
  for (const auto& t : impl_->parallelized.trained) placements["model." + t.name] = &t.placement;
  auto placement_of = [&](const std::string& name) -> const parallel::Placement* {
    if (name.starts_with("model.")) return placements.at(name);
    for (const char* key : {"optim.exp_avg.", "optim.exp_avg_sq."})
      if (name.starts_with(key)) return placements.at("model." + name.substr(std::string(key).size()));
    return nullptr;
  };
  auto out = restorable_state(model_only);
  std::erase_if(out, [&](const checkpoint::LiveTensor& t) {
    // A stage's buffers are its own: saved by its first data-parallel rank.
    if (t.name.starts_with("buffer.")) return !parallel::Placement::whole(t.global_shape).saved_by(mesh);
    const auto* p = placement_of(t.name);
    if (!p) return !parallel::Placement::whole(t.global_shape).saved_by(mesh) || mesh.coord(parallel::MeshDim::pp) != 0;
    return !p->saved_by(mesh);
  });
  return out;
}

void Trainer::load_checkpoint_state(const checkpoint::TensorMap& tensors) {
  checkpoint::TensorMap model, optim;
  torch::NoGradGuard no_grad;
  for (const auto& [name, t] : tensors) {
    if (name.starts_with("model.")) model[name.substr(6)] = t;
    else if (name.starts_with("optim.")) optim[name.substr(6)] = t;
    else if (name.starts_with("buffer.")) copy_buffer(name.substr(7), t);
    else throw std::runtime_error("checkpoint tensor '" + name + "' belongs to neither the model nor the optimizer");
  }
  if (!model.empty()) {
    // All of the model or none: every trained piece, shaped as its box, and nothing else.
    torch::NoGradGuard no_grad;
    std::set<std::string> names;
    for (const auto& t : impl_->parallelized.trained) {
      names.insert(t.name);
      const auto it = model.find(t.name);
      if (it == model.end()) throw std::runtime_error("checkpoint has no tensor 'model." + t.name + "'");
      if (it->second.sizes().vec() != t.placement.box().lengths)
        throw std::runtime_error("checkpoint tensor 'model." + t.name + "' has shape " + c10::str(it->second.sizes()) +
                                 ", this rank's piece is " + checkpoint::shape_text(t.placement.box().lengths));
    }
    for (const auto& [name, t] : model)
      if (!names.contains(name)) throw std::runtime_error("checkpoint tensor 'model." + name + "' is not one of this rank's");
    for (const auto& t : impl_->parallelized.trained) t.tensor.detach().copy_(model.at(t.name));
    if (impl_->parallelized.sharded) impl_->parallelized.sharded->release_all();  // nothing gathered may outlive the new values
  }
  if (!optim.empty()) impl_->optimizer->load_state(optim);
}

void Trainer::copy_buffer(const std::string& name, const at::Tensor& value) {
  for (auto& [own, t] : impl_->parallelized.buffers) {
    if (own != name) continue;
    if (value.sizes() != t.sizes())
      throw std::runtime_error("checkpoint tensor 'buffer." + name + "' has shape " + c10::str(value.sizes()) +
                               ", the model's is " + c10::str(t.sizes()));
    t.copy_(value);
    return;
  }
  throw std::runtime_error("checkpoint tensor 'buffer." + name + "' is not one of this rank's");
}

void Trainer::set_lr_schedule_offset(int64_t offset) { impl_->lr_offset = offset; }
int64_t Trainer::lr_schedule_offset() const { return impl_->lr_offset; }

}  // namespace troupe::train
