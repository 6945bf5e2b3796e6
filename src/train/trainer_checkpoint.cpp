#include "train/trainer_checkpoint.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <set>
#include <stdexcept>

#include "checkpoint/checkpoint_folder.h"
#include "checkpoint/rng_state.h"
#include "checkpoint/shard_file.h"
#include "models/model.h"
#include "parallel/device_mesh.h"
#include "train/job_model.h"
#include "train/trainer.h"

namespace troupe::train {

using namespace checkpoint;

namespace {

const std::vector<std::string> kParts = {"model", "optimizer", "lr_scheduler", "dataloader", "train_state", "rng"};

struct Source {
  std::string step_dir;
  bool initial = false;  // from checkpoint.initial_load_path, not the job's own folder
};

std::optional<Source> choose_source(const config::JobConfig& cfg) {
  const auto& c = cfg.checkpoint;
  if (!c.enable || c.create_seed_checkpoint) return std::nullopt;
  const auto folder = checkpoint_folder(cfg);
  if (c.load_step >= 0) return Source{resolve_step_dir(folder, c.load_step)};
  if (!committed_steps(folder).empty()) return Source{resolve_step_dir(folder)};
  if (!c.initial_load_path.empty()) return Source{resolve_step_dir(c.initial_load_path), true};
  return std::nullopt;
}

std::set<std::string> parts_to_load(const config::JobConfig& cfg, const CheckpointMetadata& meta, bool initial) {
  if (initial && cfg.checkpoint.initial_load_model_only) return {"model"};
  std::set<std::string> parts(kParts.begin(), kParts.end());
  for (const auto& x : cfg.checkpoint.exclude_from_loading) parts.erase(x);
  if (meta.model_only) std::erase_if(parts, [](const auto& p) { return p != "model" && p != "train_state"; });
  return parts;
}

std::string describe(const std::string& step_dir, const std::set<std::string>& parts) {
  std::string loaded, fresh;
  for (const auto& p : kParts) {
    auto& list = parts.contains(p) ? loaded : fresh;
    list += (list.empty() ? "" : ", ") + p;
  }
  return "checkpoint: loaded " + step_dir + " (" + (loaded.empty() ? "nothing" : loaded) + ")" +
         (fresh.empty() ? "" : "; starting fresh: " + fresh);
}

}  // namespace

at::ScalarType export_dtype(const std::string& name) {
  if (name == "float32") return at::kFloat;
  if (name == "bfloat16") return at::kBFloat16;
  if (name == "float16") return at::kHalf;
  throw std::invalid_argument("unknown dtype '" + name + "' (float32, bfloat16, float16)");
}

std::shared_ptr<HostSnapshot> snapshot_trainer(Trainer& trainer, const config::JobConfig& cfg,
                                               const SnapshotRequest& request, SnapshotBuffers& buffers) {
  const auto start = std::chrono::steady_clock::now();
  auto snap = std::make_shared<HostSnapshot>();
  snap->tmp_dir = request.tmp_dir;
  snap->tensors = buffers.copy_to_host(trainer.checkpoint_state(request.model_only),
                                       request.model_only && !request.dtype.empty()
                                           ? std::optional<at::ScalarType>(export_dtype(request.dtype))
                                           : std::nullopt);
  auto& meta = snap->meta;
  meta.step = request.step;
  meta.model_only = request.model_only;
  meta.lr_schedule_step = request.step - trainer.lr_schedule_offset();
  const auto& arch = trainer.architecture();
  meta.model = {arch.family(), cfg.model.flavor, arch.vocab_size(), cfg.training.seq_len, arch.dimensions()};
  meta.config = config::key_values(cfg);
  RankEntry rank{request.rank, "", 0, std::nullopt, {}};
  if (!request.model_only) {
    rank.dataloader = request.consumed;
    rank.rng = capture_rng();
  }
  meta.ranks.push_back(std::move(rank));
  snap->blocked_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return snap;
}

data::DataPosition reshard_token_position(const data::DataPosition& saved, int from, int to, int64_t windows_per_batch) {
  if (saved.epoch != 0)
    throw std::runtime_error("the data position is in epoch " + std::to_string(saved.epoch) +
                             ", which cannot move to another number of ranks (epochs split the shards per rank)");
  const int64_t consumed = saved.index * from;
  if (consumed % to != 0)
    throw std::runtime_error("the " + std::to_string(consumed) + " windows consumed by " + std::to_string(from) +
                             " ranks do not split evenly over " + std::to_string(to));
  data::DataPosition out;
  out.index = consumed / to;
  out.produced = out.index / windows_per_batch;
  return out;
}

// A degree the job that wrote a checkpoint recorded (1 where it recorded none: the pipeline
// degree of checkpoints from before it was recorded).
static int degree_in(const CheckpointMetadata& meta, const std::string& key) {
  for (const auto& [k, value] : meta.config)
    if (k == key) return std::max(1, std::stoi(value));
  return 1;
}

std::optional<std::string> checkpoint_to_load(const config::JobConfig& cfg) {
  const auto source = choose_source(cfg);
  if (!source) return std::nullopt;
  return source->step_dir;
}

// The first way the checkpoint's model differs from `model`: its family, a dimension, or a
// tensor's name or global shape. Empty when they are the same.
static std::string model_difference(const CheckpointMetadata& meta, const models::Architecture& arch,
                                    const models::Model& model) {
  if (meta.model.name != arch.family()) return "it holds a " + meta.model.name + " model, the job trains " + arch.family();
  if (!meta.model.dimensions.empty())
    if (auto why = model_difference(*checkpoint_model(meta.model), "the checkpoint", arch, "this job"); !why.empty())
      return why;
  std::map<std::string, std::vector<int64_t>> wanted;
  for (const auto& item : model.named_parameters()) wanted["model." + item.key()] = item.value().sizes().vec();
  for (const auto& [name, shape] : wanted) {
    const auto it = meta.tensors.find(name);
    if (it == meta.tensors.end()) return "it has no tensor '" + name + "'";
    if (it->second.global_shape != shape)
      return "tensor '" + name + "' is " + shape_text(it->second.global_shape) + " there, " + shape_text(shape) +
             " in this job";
  }
  for (const auto& [name, t] : meta.tensors)
    if (name.starts_with("model.") && !wanted.contains(name)) return "its tensor '" + name + "' is not in this job's model";
  return {};
}

static void refuse_another_model(const std::string& meta_path, const CheckpointMetadata& meta,
                                 const models::Architecture& arch, const models::Model& model) {
  if (const auto why = model_difference(meta, arch, model); !why.empty())
    throw std::runtime_error(meta_path + ": another model than this job's: " + why +
                             " (exclude_from_loading = [\"model\"] loads the rest alone)");
}

void check_checkpoint_model(const config::JobConfig& cfg, const models::Architecture& arch) {
  const auto source = choose_source(cfg);
  if (!source) return;
  const auto meta = read_metadata(source->step_dir);
  if (!parts_to_load(cfg, meta, source->initial).contains("model")) return;
  const auto shapes = arch.build(at::TensorOptions().device(at::kMeta).dtype(at::kFloat), cfg.training.seq_len);
  refuse_another_model(source->step_dir + "/metadata.json", meta, arch, *shapes);
}

Restored restore_trainer(Trainer& trainer, const config::JobConfig& cfg, int rank, int world) {
  const auto source = choose_source(cfg);
  if (!source) return {};
  const auto meta = read_metadata(source->step_dir);
  const auto parts = parts_to_load(cfg, meta, source->initial);
  const auto meta_path = source->step_dir + "/metadata.json";
  if (parts.contains("model")) {
    // The whole model's shapes: the trainer's own may be one tensor-parallel rank's parts.
    const auto shapes = trainer.architecture().build(at::TensorOptions().device(at::kMeta).dtype(at::kFloat),
                                                     cfg.training.seq_len);
    refuse_another_model(meta_path, meta, trainer.architecture(), *shapes);
  }

  std::vector<WantedTensor> wanted;
  for (const auto& t : trainer.restorable_state(!parts.contains("optimizer")))
    if (t.name.starts_with("buffer.")) {
      // With the model; a checkpoint without them (a seed, an import) leaves them as built.
      if (parts.contains("model") && meta.tensors.contains(t.name)) wanted.push_back({t.name, t.global_shape, t.box});
    } else if (parts.contains("model") || !t.name.starts_with("model.")) {
      wanted.push_back({t.name, t.global_shape, t.box});
    }
  trainer.load_checkpoint_state(read_tensors(source->step_dir, meta, wanted));

  Restored out;
  // Data positions belong to data-parallel ranks: the stages of one pipeline and the ranks of one
  // tensor-parallel group read the same batches. In the mesh (pp, dp_replicate, dp_shard, cp, tp)
  // the ranks of data-parallel index d are those with d between the pipeline and the tp x cp
  // ranks; the saved rank read for it is its first.
  const int saved_world = static_cast<int>(meta.ranks.size());
  const int saved_inner = degree_in(meta, "parallelism.tensor_parallel_degree") *
                          degree_in(meta, "parallelism.context_parallel_degree");
  const int saved_dp = std::max(saved_world / (degree_in(meta, "parallelism.pipeline_parallel_degree") * saved_inner), 1);
  const auto dims = parallel::ParallelDims::resolve(cfg.parallelism, world);
  const int dp = static_cast<int>(dims.dp());
  const int d = parallel::DeviceMesh(dims, rank).rank_in({parallel::MeshDim::dp_replicate, parallel::MeshDim::dp_shard});
  const bool same_layout = saved_world == world && saved_dp == dp;
  const int source_rank = same_layout ? rank : (d % saved_dp) * saved_inner;
  const auto mine =
      std::find_if(meta.ranks.begin(), meta.ranks.end(), [&](const auto& r) { return r.rank == source_rank; });
  const bool per_rank = parts.contains("dataloader") || parts.contains("rng");
  if (per_rank && mine == meta.ranks.end())
    throw std::runtime_error(meta_path + ": no state of rank " + std::to_string(source_rank) + " (saved with " +
                             std::to_string(saved_world) +
                             " ranks); set checkpoint.exclude_from_loading = [\"dataloader\", \"rng\"] to load it");
  if (parts.contains("rng")) restore_rng(mine->rng, meta_path);
  if (parts.contains("dataloader") && mine->dataloader) {
    if (saved_dp == dp) {
      out.dataloader = mine->dataloader;
    } else if (cfg.training.dataset == "tokens") {
      const auto per_batch = cfg.training.local_batch_size;
      try {
        out.dataloader = reshard_token_position(*mine->dataloader, saved_dp, dp, per_batch);
      } catch (const std::exception& e) {
        throw std::runtime_error(meta_path + ": " + e.what() +
                                 "; set checkpoint.exclude_from_loading = [\"dataloader\"] to start the data over");
      }
    } else {
      throw std::runtime_error(meta_path + ": the data position of " + std::to_string(saved_dp) +
                               " data-parallel ranks cannot move to " + std::to_string(dp) + " for dataset '" +
                               cfg.training.dataset +
                               "' (documents are dealt to ranks); use token shards (training.dataset = \"tokens\") or "
                               "set checkpoint.exclude_from_loading = [\"dataloader\"]");
    }
  }
  out.step = parts.contains("train_state") ? meta.step : 0;
  trainer.set_lr_schedule_offset(parts.contains("lr_scheduler") ? out.step - meta.lr_schedule_step : out.step);
  out.message = describe(source->step_dir, parts);
  if (meta.model_only && meta.step > 0 && !source->initial)
    out.message += " (warning: step-" + std::to_string(meta.step) +
                   " holds the model alone, the final save of a run with checkpoint.last_save_model_only = true: "
                   "the optimizer's moments, the data position and the RNG start over)";
  return out;
}

}  // namespace troupe::train
