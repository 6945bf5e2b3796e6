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
#include "checkpoint/trainer_checkpoint.h"
#include "checkpoint/write_step.h"
#include "cli/commands.h"
#include "config/job_config.h"
#include "data/tokenizer.h"
#include "models/llama3/hf_config.h"
#include "models/llama3/hf_conversion.h"
#include "models/llama3/model.h"
#include "runtime/exit_codes.h"

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

// The configured model: the flavor, sized by the tokenizer and training.seq_len as training does.
models::llama3::ModelArgs configured_args(const config::JobConfig& cfg) {
  auto args = models::llama3::flavor(cfg.model.flavor);
  args.vocab_size = data::Tokenizer::load(cfg.model.tokenizer_path).vocab_size();
  args.max_seq_len = cfg.training.seq_len;
  return args;
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
            << meta.lr_schedule_step << ", model " << meta.model.name << ' ' << meta.model.flavor << " (vocab "
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
    checkpoint::read_whole_tensors(dir, meta);
    std::cout << "verified: every shard's size and every tensor's checksum match\n";
  }
  return 0;
}

int run_export(const CheckpointOptions& o, const std::vector<std::string>& extras) {
  const auto cfg = load_config(o, extras);
  const auto dir = checkpoint::resolve_step_dir(o.checkpoint.empty() ? checkpoint::checkpoint_folder(cfg) : o.checkpoint,
                                                step_of(o));
  const auto meta = checkpoint::read_metadata(dir);
  auto args = models::llama3::flavor(meta.model.flavor);
  args.vocab_size = meta.model.vocab_size;
  args.max_seq_len = meta.model.max_seq_len;
  if (!o.config_path.empty()) {
    const auto want = configured_args(cfg);
    if (cfg.model.flavor != meta.model.flavor || want.vocab_size != args.vocab_size)
      throw std::runtime_error(dir + " holds " + meta.model.flavor + " with vocab " + std::to_string(args.vocab_size) +
                               ", the config asks for " + cfg.model.flavor + " with vocab " +
                               std::to_string(want.vocab_size));
  }
  const auto type = checkpoint::export_dtype(o.dtype);
  checkpoint::TensorMap titan;
  for (auto& [name, t] : checkpoint::read_whole_tensors(dir, meta, "model.")) titan[name.substr(6)] = t.to(type);
  fs::create_directories(o.hf);
  const auto hf = models::llama3::to_hf(titan, args);
  checkpoint::write_safetensors((fs::path(o.hf) / "model.safetensors").string(), hf, {{"format", "pt"}});
  checkpoint::write_file_durably((fs::path(o.hf) / "config.json").string(),
                                 models::llama3::hf_config(args, o.dtype).dump(2) + "\n");
  std::cout << "exported " << dir << " (" << hf.size() << " tensors, " << o.dtype << ") to " << o.hf
            << " as Hugging Face LlamaForCausalLM\n";
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

int run_import(const CheckpointOptions& o, const std::vector<std::string>& extras) {
  const auto cfg = load_config(o, extras);
  const auto args = configured_args(cfg);
  const auto config_path = (fs::path(o.hf) / "config.json").string();
  models::llama3::check_hf_config(nlohmann::json::parse(checkpoint::read_file(config_path)), args, config_path);
  const auto titan = models::llama3::from_hf(read_hf_weights(o.hf), args);
  // The model's own names and shapes, without memory: what training will load the seed into.
  models::llama3::Llama3Model shapes(args, at::TensorOptions().device(at::kMeta).dtype(at::kFloat));
  checkpoint::HostSnapshot seed;
  for (const auto& item : shapes.named_parameters()) {
    const auto& t = titan.at(item.key());
    if (t.sizes() != item.value().sizes())
      throw std::runtime_error(o.hf + ": tensor for '" + item.key() + "' has shape " + c10::str(t.sizes()) +
                               ", the configured model needs " + c10::str(item.value().sizes()));
    auto shape = t.sizes().vec();
    seed.tensors.push_back({"model." + item.key(), t.contiguous(), shape, checkpoint::whole_box(shape)});
  }
  seed.meta.model_only = true;
  seed.meta.model = {cfg.model.name, cfg.model.flavor, args.vocab_size, args.max_seq_len};
  seed.meta.config = config::key_values(cfg);
  seed.meta.ranks.push_back({0, "", 0, std::nullopt, {}});
  const auto dir = checkpoint::write_step(o.output, std::move(seed));
  std::cout << "imported " << o.hf << " as the seed checkpoint " << dir
            << " (start training from it with checkpoint.initial_load_path or as the job's checkpoint folder)\n";
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
  auto* exp = cmd->add_subcommand("export", "Write Hugging Face LlamaForCausalLM safetensors + config.json");
  exp->add_option("--hf", o->hf, "output folder")->required();
  exp->add_option("--checkpoint", o->checkpoint, "checkpoint folder or step-N (default: the config's folder)");
  exp->add_option("--step", o->step, "a committed step (default: the newest)");
  exp->add_option("--config", o->config_path, "job config, checked against the checkpoint's model");
  exp->add_option("--dtype", o->dtype, "float32 | bfloat16 | float16")->capture_default_str();
  exp->allow_extras();
  auto* imp = cmd->add_subcommand("import", "Make a seed checkpoint (step-0) from a Hugging Face Llama folder");
  imp->add_option("--hf", o->hf, "folder with config.json and model.safetensors")->required();
  imp->add_option("--output", o->output, "checkpoint folder to create step-0 in")->required();
  imp->add_option("--config", o->config_path, "job config: model flavor, tokenizer (vocab), seq_len");
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
