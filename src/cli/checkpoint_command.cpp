// `troupe checkpoint info | export --hf | import --hf`: read, convert and create checkpoints.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <cstdio>
#include <filesystem>
#include <iostream>
#include <memory>
#include <set>

#include "checkpoint/checkpoint_folder.h"
#include "checkpoint/file_io.h"
#include "checkpoint/shard_file.h"
#include "train/trainer_checkpoint.h"
#include "checkpoint/write_step.h"
#include "cli/commands.h"
#include "config/job_config.h"
#include "data/tokenizer.h"
#include "models/model.h"
#include "models/registry.h"
#include "runtime/exit_codes.h"
#include "train/job_model.h"

namespace troupe::cli {

namespace {

namespace fs = std::filesystem;

struct CheckpointOptions {
  std::string path;        // info: a checkpoint folder or step directory
  std::string checkpoint;  // export: the folder or step (default: the config's)
  std::string hf;          // export: output folder; import: input folder
  std::string output;      // import: checkpoint folder to create step-0 in
  std::string config_path;
  std::string dtype = "float32";
  int64_t step = -1;
  bool verify = false;
};

std::optional<int64_t> step_of(const CheckpointOptions& o) {
  return o.step >= 0 ? std::optional<int64_t>(o.step) : std::nullopt;
}

config::JobConfig load_config(const CheckpointOptions& o, const std::vector<std::string>& extras) {
  return config::load_job_config(o.config_path, config::parse_override_args(extras));
}

std::string megabytes(uint64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f MB", static_cast<double>(bytes) / 1e6);
  return buf;
}

std::string box_text(const checkpoint::ShardBox& b) {
  return checkpoint::shape_text(b.offsets) + "+" + checkpoint::shape_text(b.lengths);
}

int run_info(const CheckpointOptions& o) {
  const auto dir = checkpoint::resolve_step_dir(o.path, step_of(o));
  const auto steps = checkpoint::committed_steps(fs::path(dir).parent_path().string());
  std::string listed;
  for (auto s : steps) listed += (listed.empty() ? "" : ", ") + std::to_string(s);
  const auto meta = checkpoint::read_metadata(dir);
  std::cout << "folder " << fs::path(dir).parent_path().string() << ": committed steps " << listed << "\n"
            << dir << ": format " << meta.format_version << ", step " << meta.step
            << (meta.model_only ? ", model only" : ", full training state") << ", lr schedule step "
            << meta.lr_schedule_step << ", model " << meta.model.name << ' ' << (meta.model.flavor.empty() ? std::string("(by its dimensions)") : meta.model.flavor) << " (vocab "
            << meta.model.vocab_size << ", seq " << meta.model.max_seq_len << "), " << meta.ranks.size() << " rank(s)\n";
  uint64_t total = 0;
  for (const auto& r : meta.ranks) {
    total += r.bytes;
    std::cout << "rank " << r.rank << " wrote " << r.file << " (" << megabytes(r.bytes) << ")";
    if (const auto& d = r.dataloader)
      std::cout << "; data loader after " << d->produced << " batches (epoch " << d->epoch << ", index " << d->index
                << ", file " << d->file << ", offset " << d->offset << ", token " << d->token << ")";
    if (!r.rng.empty()) std::cout << "; rng " << r.rng.size() << " generator(s)";
    std::cout << '\n';
  }
  std::cout << "tensor | dtype | global shape | shards: rank file offsets+lengths bytes xxh3\n";
  for (const auto& [name, t] : meta.tensors) {
    std::cout << name << " | " << t.dtype << " | " << checkpoint::shape_text(t.global_shape) << " |";
    for (const auto& s : t.shards)
      std::cout << ' ' << s.rank << ' ' << s.file << ' ' << box_text(s.box) << ' ' << (s.end - s.begin) << ' '
                << checkpoint::to_hex(s.xxh3);
    std::cout << '\n';
  }
  std::cout << meta.tensors.size() << " tensors, " << megabytes(total) << " in all\n";
  if (o.verify) {
    // A folder given alone: every committed step, each named; else the one step shown.
    const bool every_step = !step_of(o) && !fs::exists(fs::path(o.path) / "metadata.json");
    const auto folder = fs::path(dir).parent_path().string();
    std::vector<std::string> dirs{dir};
    if (every_step) {
      dirs.clear();
      for (auto s : steps) dirs.push_back(checkpoint::resolve_step_dir(folder, s));
    }
    for (const auto& d : dirs) {
      checkpoint::read_whole_tensors(d, checkpoint::read_metadata(d));
      std::cout << "verified " << d << ": metadata.json, every shard's size, header and tensor checksums\n";
    }
  }
  return 0;
}

int run_export(const CheckpointOptions& o, const std::vector<std::string>& extras) {
  const auto cfg = load_config(o, extras);
  const auto dir = checkpoint::resolve_step_dir(o.checkpoint.empty() ? checkpoint::checkpoint_folder(cfg) : o.checkpoint,
                                                step_of(o));
  const auto meta = checkpoint::read_metadata(dir);
  const auto model = train::checkpoint_model(meta.model);
  if (!o.config_path.empty())
    if (const auto why = train::model_difference(*model, dir, *train::job_model(cfg), "the config"); !why.empty())
      throw std::runtime_error(dir + " holds another model than the config's: " + why);
  const auto type = train::export_dtype(o.dtype);
  checkpoint::TensorMap native;
  for (auto& [name, t] : checkpoint::read_whole_tensors(dir, meta, "model.")) native[name.substr(6)] = t.to(type);
  // The model's buffers (DeepSeek V3's expert biases) keep their fp32, as DeepSeek's checkpoints do.
  for (auto& [name, t] : checkpoint::read_whole_tensors(dir, meta, "buffer.")) native[name.substr(7)] = t;
  fs::create_directories(o.hf);
  const auto hf = model->to_hf(native);
  checkpoint::write_safetensors((fs::path(o.hf) / "model.safetensors").string(), hf, {{"format", "pt"}});
  checkpoint::write_file_durably((fs::path(o.hf) / "config.json").string(),
                                 model->hf_config(o.dtype, meta.model.max_seq_len).dump(2) + "\n");
  std::cout << "exported " << dir << " (" << hf.size() << " tensors, " << o.dtype << ") to " << o.hf
            << " as Hugging Face " << model->hf_class() << "\n";
  return 0;
}

// model.safetensors, or the shards a model.safetensors.index.json names.
checkpoint::TensorMap read_hf_weights(const std::string& folder) {
  const auto index = fs::path(folder) / "model.safetensors.index.json";
  if (!fs::exists(index)) return checkpoint::read_safetensors((fs::path(folder) / "model.safetensors").string());
  std::set<std::string> files;
  const auto map = nlohmann::json::parse(checkpoint::read_file(index.string())).at("weight_map");
  for (const auto& [name, file] : map.items()) files.insert(file.get<std::string>());
  checkpoint::TensorMap all;
  for (const auto& f : files) all.merge(checkpoint::read_safetensors((fs::path(folder) / f).string()));
  return all;
}

// The registered family whose Hugging Face model_type the config names, and its model.
models::ArchitecturePtr hf_model(const std::string& config_path) {
  nlohmann::json config;
  try {
    config = nlohmann::json::parse(checkpoint::read_file(config_path));
  } catch (const nlohmann::json::exception& e) {
    throw std::runtime_error(config_path + ": not valid JSON (" + e.what() + ")");
  }
  const auto type = config.value("model_type", std::string());
  std::string known;
  for (const auto& spec : models::model_specs()) {
    if (spec.hf_model_type == type) return spec.from_hf_config(config, config_path);
    known += (known.empty() ? "" : ", ") + spec.hf_model_type;
  }
  throw std::runtime_error(config_path + ": model_type '" + type + "' is not a registered family's (" + known + ")");
}

int run_import(const CheckpointOptions& o, const std::vector<std::string>& extras) {
  const auto cfg = load_config(o, extras);
  const auto model = hf_model((fs::path(o.hf) / "config.json").string());
  if (!o.config_path.empty()) {
    if (cfg.model.name != model->family())
      throw std::runtime_error(o.hf + " holds a " + model->family() + " model, the config's model.name is " + cfg.model.name);
    const auto vocab = data::Tokenizer::load(cfg.model.tokenizer_path).vocab_size();
    if (vocab > model->vocab_size())
      throw std::runtime_error(o.hf + ": vocab_size " + std::to_string(model->vocab_size()) + " is smaller than the tokenizer's " +
                               std::to_string(vocab) + " tokens (" + cfg.model.tokenizer_path + ")");
  }
  const auto native = model->from_hf(read_hf_weights(o.hf));
  // The model's own names and shapes, without memory: what training will load the seed into.
  const auto shapes = model->build(at::TensorOptions().device(at::kMeta).dtype(at::kFloat), cfg.training.seq_len);
  checkpoint::HostSnapshot seed;
  for (const auto& item : shapes->named_parameters()) {
    const auto& t = native.at(item.key());
    if (t.sizes() != item.value().sizes())
      throw std::runtime_error(o.hf + ": tensor for '" + item.key() + "' has shape " + c10::str(t.sizes()) +
                               ", config.json's model needs " + c10::str(item.value().sizes()));
    auto shape = t.sizes().vec();
    seed.tensors.push_back({"model." + item.key(), t.contiguous(), shape, checkpoint::whole_box(shape)});
  }
  for (const auto& item : shapes->named_buffers()) {
    const auto it = native.find(item.key());
    if (it == native.end()) continue;  // HF has none (Qwen3 MoE's bias): training starts it at zero
    auto shape = it->second.sizes().vec();
    seed.tensors.push_back({"buffer." + item.key(), it->second.to(at::kFloat).contiguous(), shape, checkpoint::whole_box(shape)});
  }
  seed.meta.model_only = true;
  seed.meta.model = {model->family(), "", model->vocab_size(), cfg.training.seq_len, model->dimensions()};
  seed.meta.config = config::key_values(cfg);
  seed.meta.ranks.push_back({0, "", 0, std::nullopt, {}});
  const auto dir = checkpoint::write_step(o.output, std::move(seed));
  std::cout << "imported " << o.hf << " (" << model->hf_class() << ", " << model->num_params()
            << " parameters) as the seed checkpoint " << dir
            << " (train from it with checkpoint.initial_load_path, or as the job's checkpoint folder, and model.name = \""
            << model->family() << "\" with model.flavor = \"\" to take its dimensions)\n";
  return 0;
}

}  // namespace

Action add_checkpoint_command(CLI::App& app) {
  auto o = std::make_shared<CheckpointOptions>();
  auto* cmd = app.add_subcommand("checkpoint", "Inspect checkpoints, export them to Hugging Face, import from it");
  cmd->require_subcommand(1);
  auto* info = cmd->add_subcommand("info", "Steps, tensors, shapes, dtypes, layout, sizes and which rank wrote what");
  info->add_option("path", o->path, "checkpoint folder (newest step) or step-N directory")->required();
  info->add_option("--step", o->step, "a committed step of the folder");
  info->add_flag("--verify", o->verify, "read every tensor and check sizes and checksums");
  auto* exp = cmd->add_subcommand("export", "Write Hugging Face safetensors + config.json (LlamaForCausalLM, Qwen3ForCausalLM)");
  exp->add_option("--hf", o->hf, "output folder")->required();
  exp->add_option("--checkpoint", o->checkpoint, "checkpoint folder or step-N (default: the config's folder)");
  exp->add_option("--step", o->step, "a committed step (default: the newest)");
  exp->add_option("--config", o->config_path, "job config, checked against the checkpoint's model");
  exp->add_option("--dtype", o->dtype, "float32 | bfloat16 | float16")->capture_default_str();
  exp->allow_extras();
  auto* imp = cmd->add_subcommand("import", "Make a seed checkpoint (step-0) from a Hugging Face folder of any registered family, sized by its config.json");
  imp->add_option("--hf", o->hf, "folder with config.json and model.safetensors")->required();
  imp->add_option("--output", o->output, "checkpoint folder to create step-0 in")->required();
  imp->add_option("--config", o->config_path, "job config: checked against the model (its family, tokenizer), and training.seq_len");
  imp->allow_extras();
  for (auto* sub : {exp, imp}) sub->footer("Config keys can be overridden as in `troupe train` (--section.key VALUE).");
  return [=]() -> int {
    if (!cmd->parsed()) return -1;
    try {
      if (info->parsed()) return run_info(*o);
      if (exp->parsed()) return run_export(*o, exp->remaining());
      return run_import(*o, imp->remaining());
    } catch (const config::ConfigError& e) {
      std::cerr << "troupe checkpoint: " << e.what() << '\n';
      return runtime::exit_code::bad_config;
    } catch (const std::exception& e) {
      std::cerr << "troupe checkpoint: " << e.what() << '\n';
      return 1;
    }
  };
}

}  // namespace troupe::cli
