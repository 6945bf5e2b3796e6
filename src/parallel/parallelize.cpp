#include "parallel/parallelize.h"

#include <torch/torch.h>

#include <algorithm>
#include <map>
#include <set>
#include <stdexcept>

#include "comm/gloo_communicator.h"
#include "comm/nccl_communicator.h"
#include "comm/replica_communicator.h"
#include "parallel/rank_group.h"
#include "parallel/tensor_parallel.h"

namespace troupe::parallel {

namespace {

std::vector<std::pair<std::string, at::Tensor>> named_parameters(torch::nn::Module& m) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& item : m.named_parameters()) out.emplace_back(item.key(), item.value());
  return out;
}

PipelinePlan split_and_schedule(const config::JobConfig& cfg, const DeviceMesh& mesh, int64_t n_blocks,
                                int64_t microbatches) {
  const auto& p = cfg.parallelism;
  const int64_t degree = mesh.dims().of(MeshDim::pp);
  const bool interleaved = pp::is_interleaved(p.pipeline_parallel_schedule);
  PipelinePlan plan;
  plan.split = pp::split_stages(n_blocks, degree, degree * (interleaved ? 2 : 1), p.pipeline_parallel_layers_per_stage,
                                p.pipeline_parallel_split_points);
  const auto per_rank = plan.split.stages() / degree;
  try {
    plan.schedule = pp::make_schedule(p.pipeline_parallel_schedule, static_cast<int>(degree),
                                      static_cast<int>(microbatches), static_cast<int>(per_rank));
    pp::check(plan.schedule);
  } catch (const pp::ScheduleError& e) {
    throw std::invalid_argument("parallelism.pipeline_parallel_schedule " + p.pipeline_parallel_schedule + " with " +
                                std::to_string(plan.split.stages()) + " stages over " + std::to_string(degree) +
                                " ranks and " + std::to_string(microbatches) + " micro-batches: " + e.what());
  }
  for (int s : plan.schedule.stages_of(static_cast<int>(mesh.coord(MeshDim::pp)))) {
    const auto [b, e] = plan.split.units_of(s);
    for (auto u = b; u < e; ++u) plan.units.push_back(u);
  }
  return plan;
}

bool is_expert(const models::ShardingPlan& plan, const std::string& name) {
  return std::ranges::any_of(plan.experts, [&](const std::string& suffix) { return name.ends_with(suffix); });
}

// Step 2: the model's own plan. Each parameter's placement starts with its tensor-parallel
// split (a rule may name a parameter the model lacks: a tied model has no output), or with
// expert parallelism's split of a routed experts' parameter by expert. Context parallelism
// splits activations only: every cp rank holds the parameters alike.
std::map<std::string, Placement> apply_model_plan(const models::ShardingPlan& plan,
                                                  const std::vector<std::pair<std::string, at::Tensor>>& parameters,
                                                  const DeviceMesh& mesh) {
  std::map<std::string, Placement> placements;
  for (const auto& [name, t] : parameters) {
    auto placement = Placement::whole(t.sizes().vec());
    if (mesh.dims().of(MeshDim::ep) > 1 && is_expert(plan, name)) {
      placements.emplace(name, placement.split(MeshDim::ep, 0, mesh.coord(MeshDim::ep), mesh.dims().of(MeshDim::ep)));
      continue;
    }
    for (const auto& rule : plan.tensor_parallel) {
      if (!name.ends_with(rule.suffix)) continue;
      const auto tp = mesh.dims().of(MeshDim::tp);
      const auto parts = rule.max_parts > 0 ? std::min(tp, rule.max_parts) : tp;
      placement = placement.split(MeshDim::tp, rule.dim, mesh.coord(MeshDim::tp) / (tp / parts), parts);
      break;
    }
    placements.emplace(name, std::move(placement));
  }
  return placements;
}

// torchtitan's "op" policy: no unit is recomputed whole; the blocks recompute their element-wise
// ops instead (Model::recompute_elementwise).
bool op_policy(const config::ActivationCheckpointSection& ac) {
  return ac.mode == "selective" && ac.selective_ac_option == "op";
}

// Step 3: which of `unit_ids` recompute their forward in the backward.
std::vector<bool> apply_activation_checkpointing(models::Model& model, const std::vector<int64_t>& unit_ids,
                                                 const config::ActivationCheckpointSection& ac) {
  const int64_t every = ac.mode != "selective" || op_policy(ac) ? 1 : std::stoll(ac.selective_ac_option);
  const auto whole = recompute_plan(model.units().size(), op_policy(ac) ? "none" : ac.mode, every);
  model.recompute_elementwise(op_policy(ac));
  std::vector<bool> recompute;
  for (auto u : unit_ids) recompute.push_back(whole[u]);
  return recompute;
}

}  // namespace

std::optional<PipelinePlan> plan_pipeline(const config::JobConfig& cfg, const ParallelDims& dims, int rank,
                                          const models::Architecture& arch) {
  if (dims.of(MeshDim::pp) == 1) return std::nullopt;
  const auto rows = cfg.parallelism.pipeline_parallel_microbatch_size;
  if (cfg.training.local_batch_size % rows != 0)
    throw std::invalid_argument("training.local_batch_size " + std::to_string(cfg.training.local_batch_size) +
                                " is not a multiple of parallelism.pipeline_parallel_microbatch_size " +
                                std::to_string(rows));
  if (arch.tie_embeddings())
    throw std::invalid_argument("model: " + arch.family() + " " + cfg.model.flavor +
                                " ties the output to the embedding, which pipeline parallelism does not support yet");
  return split_and_schedule(cfg, DeviceMesh(dims, rank), arch.n_blocks(), cfg.training.local_batch_size / rows);
}

comm::CommunicatorPtr connect(const RankContext& rank, const DeviceMesh& mesh, const std::vector<MeshDim>& over,
                              bool cuda) {
  const bool alone = rank.shard_alone && over == std::vector<MeshDim>{MeshDim::dp_shard};
  int64_t size = 1;
  for (auto d : over) size *= mesh.dims().of(d);
  if (size == 1 && !alone) return nullptr;
  if (rank.replicas)
    return comm::make_replica_communicator(mesh.group_name(over) + "[replicas]", static_cast<int>(size),
                                           cuda ? rank.local_rank : -1);
  if (!rank.rendezvous) throw std::logic_error("a multi-rank Trainer needs a rendezvous");
  const auto name = mesh.group_name(over);
  const int r = mesh.rank_in(over), n = static_cast<int>(size);
  return cuda ? comm::make_nccl_communicator(*rank.rendezvous, name, r, n, rank.local_rank, rank.flight_recorder)
              : comm::make_gloo_communicator(*rank.rendezvous, name, r, n, rank.flight_recorder);
}

ParallelModel parallelize(models::Model& model, const models::Architecture& arch, const std::optional<PipelinePlan>& plan,
                          const config::JobConfig& cfg,
                          const RankContext& rank, const ParallelDims& dims, const std::string& device,
                          at::ScalarType compute_dtype, at::ScalarType reduce_dtype) {
  const bool cuda = device.starts_with("cuda");
  const DeviceMesh mesh(dims, rank.rank);
  ParallelModel out;
  // 1. The units this rank runs: every one, or its pipeline stages'.
  if (plan) {
    out.unit_ids = plan->units;
  } else {
    for (size_t u = 0; u < model.units().size(); ++u) out.unit_ids.push_back(static_cast<int64_t>(u));
  }
  std::set<const void*> kept;
  for (auto u : out.unit_ids) {
    out.units.push_back(model.units()[u]);
    for (const auto& t : out.units.back()->parameters()) kept.insert(t.unsafeGetTensorImpl());
  }
  std::vector<std::pair<std::string, at::Tensor>> owned;  // this rank's parameters, the model's names
  for (const auto& [name, t] : named_parameters(model))
    if (kept.contains(t.unsafeGetTensorImpl())) owned.emplace_back(name, t);
  for (const auto& [name, t] : owned) out.parameters.push_back(t);
  std::set<const void*> kept_buffers;
  for (const auto& u : out.units)
    for (const auto& b : u->buffers()) kept_buffers.insert(b.unsafeGetTensorImpl());
  for (const auto& item : model.named_buffers())
    if (kept_buffers.contains(item.value().unsafeGetTensorImpl())) out.buffers.emplace_back(item.key(), item.value());

  // 2. The model's own plan: the placements from the whole shapes; with tensor parallelism the
  // units switch to their tensor-parallel forwards (the family refuses what it cannot split) and
  // each parameter keeps this rank's piece of its placement.
  const auto sharding_plan = arch.sharding_plan();
  const auto plan_placements = apply_model_plan(sharding_plan, owned, mesh);
  if (dims.of(MeshDim::tp) > 1) {
    out.tp = connect(rank, mesh, {MeshDim::tp}, cuda);
    model.apply_tensor_parallel(make_rank_group(out.tp), {.asynchronous = cfg.parallelism.enable_async_tensor_parallel,
                                                           .loss_parallel = !cfg.parallelism.disable_loss_parallel});
    // Routed experts under ep are cut by expert below, not by width (etp 1).
    for (auto& [name, t] : owned)
      if (dims.of(MeshDim::ep) == 1 || !is_expert(sharding_plan, name)) keep_piece(t, plan_placements.at(name));
  }
  if (dims.of(MeshDim::cp) > 1) {
    out.cp = connect(rank, mesh, {MeshDim::cp}, cuda);
    model.apply_context_parallel({make_rank_group(out.cp), models::parse_rotate_method(cfg.parallelism.context_parallel_rotate_method)});
  }

  std::set<const void*> experts;  // with expert parallelism: the routed experts' parameters
  if (dims.of(MeshDim::ep) > 1) {
    out.ep = connect(rank, mesh, {MeshDim::ep}, cuda);
    model.apply_expert_parallel(make_rank_group(out.ep));
    for (auto& [name, t] : owned)
      if (is_expert(sharding_plan, name)) {
        keep_piece(t, plan_placements.at(name));
        experts.insert(t.unsafeGetTensorImpl());
      }
  }

  // 3. Activation checkpointing.
  const auto recompute = apply_activation_checkpointing(model, out.unit_ids, cfg.activation_checkpoint);

  // The groups of the mesh dimensions a trained tensor may be split over.
  std::map<std::vector<MeshDim>, comm::CommunicatorPtr> groups{{{MeshDim::tp}, out.tp}};

  // 4. Data parallelism; without it every parameter is trained whole. FSDP shards over dp_shard
  // x cp, as torchtitan's: the cp ranks' gradients (of their parts of the sequences) are averaged
  // with the data-parallel ones'.
  const std::vector<MeshDim> shard_dims =
      dims.of(MeshDim::cp) > 1 ? std::vector{MeshDim::dp_shard, MeshDim::cp} : std::vector{MeshDim::dp_shard};
  if (dims.dp() * dims.of(MeshDim::cp) > 1 || rank.shard_alone) {
    DataParallelOptions o;
    // A tied head computes with the embedding's weight: the embedding's unit is gathered with
    // it, and the weight's gradient collects both uses before the embedding's reduction.
    auto local = [&](size_t unit) {
      const auto it = std::find(out.unit_ids.begin(), out.unit_ids.end(), static_cast<int64_t>(unit));
      if (it == out.unit_ids.end()) throw std::logic_error("a unit borrows parameters another rank holds");
      return static_cast<size_t>(it - out.unit_ids.begin());
    };
    for (const auto& [borrower, owner] : model.borrowed_units()) o.borrows.push_back({local(borrower), local(owner)});
    o.shard = connect(rank, mesh, shard_dims, cuda);
    o.replicate = connect(rank, mesh, {MeshDim::dp_replicate}, cuda);
    o.compute_dtype = compute_dtype;
    o.reduce_dtype = reduce_dtype;
    o.reshard = parse_reshard(cfg.parallelism.fsdp_reshard_after_forward);
    // The tp ranks' tokens are parts of the same sequences, whose gradients add up: the average is
    // over ep / tp of the ep ranks' sums.
    if (!experts.empty())
      o.experts = {experts, connect(rank, mesh, {MeshDim::efsdp}, cuda), dims.of(MeshDim::ep) / dims.of(MeshDim::tp)};
    if (cfg.float8.enable_fsdp_float8_all_gather) {
      o.float8 = model.weight_services().float8;  // null without the FP8 converter
      o.float8_precompute = cfg.float8.precompute_float8_dynamic_scale_for_fsdp;
    }
    out.sharded = std::make_unique<ShardedUnits>(out.units, owned, o);
    model.weight_services().sinks = &out.sharded->gradient_sinks();
    for (const auto& s : out.sharded->shards()) {
      if (s.master.numel() == 0) continue;  // a chunk past the end of a short parameter
      const auto& whole = plan_placements.at(s.name);
      out.trained.push_back(
          {s.name, s.master, whole.split(whole.split_over(MeshDim::ep) ? std::vector{MeshDim::efsdp} : shard_dims, 0, s.index, s.parts),
           s.unit});
    }
    groups[shard_dims] = o.shard;
    groups[{MeshDim::dp_replicate}] = o.replicate;
  } else {
    for (const auto& [name, t] : owned) out.trained.push_back({name, t, plan_placements.at(name)});
  }
  std::set<std::vector<MeshDim>> split;
  for (const auto& t : out.trained) {
    // An expert's pieces over ep x efsdp are one to a rank of dp_shard x cp x tp: the shard and
    // tp groups' sums already cover them once.
    if (t.placement.split_over(MeshDim::ep)) continue;
    for (const auto& g : t.placement.split_groups()) split.insert(g);
    if (!out.tp) continue;
    // Held alike by several tp ranks: whole on every one, or a part on tp / parts of them.
    const auto tp = dims.of(MeshDim::tp);
    TpReplicated r{t.tensor, 0, 1};
    for (const auto& s : t.placement.splits)
      if (s.mesh == std::vector{MeshDim::tp}) r = {t.tensor, s.index, s.parts};
    if (r.parts < tp) out.tp_replicated.push_back(r);
  }
  // A split with no group is of one part: nothing to sum across.
  for (auto d : split)
    if (const auto it = groups.find(d); it != groups.end() && it->second) out.norm_groups.push_back(it->second);

  // 5. The executors.
  out.executor = std::make_unique<UnitExecutor>(out.units, recompute, out.sharded.get());
  if (plan) {
    out.stages = connect(rank, mesh, {MeshDim::pp}, cuda);
    out.pipeline = std::make_unique<pp::PipelineExecutor>(
        plan->schedule, out.stages->rank(), plan->split, *out.executor, out.stages,
        // Between stages the residual stream is this cp rank's part of the sequence, and of it
        // (sequence parallelism) 1/tp.
        std::vector<int64_t>{cfg.training.local_batch_size / plan->schedule.microbatches,
                             cfg.training.seq_len / dims.of(MeshDim::cp) / dims.of(MeshDim::tp), arch.hidden_dim()},
        at::TensorOptions().dtype(compute_dtype).device(torch::Device(device)));
  }
  return out;
}

}  // namespace troupe::parallel
