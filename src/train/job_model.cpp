#include "train/job_model.h"

#include <stdexcept>

#include "checkpoint/checkpoint_folder.h"
#include "data/tokenizer.h"
#include "models/registry.h"
#include "train/trainer_checkpoint.h"

namespace troupe::train {

namespace {

// The dimensions of an empty flavor: those of the checkpoint to load.
models::Dimensions recorded_dimensions(const config::JobConfig& cfg) {
  const auto dir = checkpoint_to_load(cfg);
  if (!dir)
    throw config::ConfigError("model.flavor is empty, which takes the model from the checkpoint to load, and there is none "
                              "(set model.flavor, or checkpoint.enable with a checkpoint or checkpoint.initial_load_path)");
  const auto meta = checkpoint::read_metadata(*dir);
  if (meta.model.dimensions.empty())
    throw config::ConfigError("model.flavor is empty, and " + *dir + " records no dimensions (it holds " + meta.model.name +
                              " " + meta.model.flavor + ": set model.flavor = \"" + meta.model.flavor + "\")");
  if (meta.model.name != cfg.model.name)
    throw config::ConfigError("model.name is " + cfg.model.name + ", and " + *dir + " holds a " + meta.model.name + " model");
  return meta.model.dimensions;
}

}  // namespace

models::ArchitecturePtr job_model(const config::JobConfig& cfg, int64_t tokenizer_vocab) {
  models::Dimensions dims;
  if (cfg.model.flavor.empty()) dims = recorded_dimensions(cfg);
  for (const auto& d : cfg.model.dimensions) {
    std::erase_if(dims, [&](const auto& kv) { return kv.first == d.key; });
    dims.emplace_back(d.key, d.value);
  }
  try {
    const auto& spec = models::model_spec(cfg.model.name);
    // Recorded dimensions name every key, so any flavor is a base they overwrite whole.
    const auto flavor = cfg.model.flavor.empty() ? spec.flavors.front() : cfg.model.flavor;
    return models::configure_model(cfg.model.name, flavor, dims, tokenizer_vocab);
  } catch (const std::invalid_argument& e) {
    // Point at where a dimension was set when the message names it.
    const std::string what = e.what();
    for (const auto& d : cfg.model.dimensions)
      if (what.starts_with("model." + d.key + " ") || what.starts_with("model." + d.key + ":"))
        throw config::ConfigError(d.origin + ": " + what);
    throw config::ConfigError(what);
  }
}

models::ArchitecturePtr checkpoint_model(const checkpoint::ModelEntry& recorded) {
  const auto& spec = models::model_spec(recorded.name);
  if (recorded.dimensions.empty())
    return spec.configure(recorded.flavor, {{"vocab_size", std::to_string(recorded.vocab_size)}});
  return spec.configure(spec.flavors.front(), recorded.dimensions);
}

std::string model_difference(const models::Architecture& a, const std::string& a_name, const models::Architecture& b,
                             const std::string& b_name) {
  if (a.family() != b.family()) return a_name + " is " + a.family() + ", " + b_name + " " + b.family();
  const auto theirs = b.dimensions();
  for (const auto& [key, value] : a.dimensions())
    for (const auto& [other_key, other] : theirs)
      if (key == other_key && value != other)
        return "model." + key + " is " + value + " in " + a_name + ", " + other + " in " + b_name;
  return {};
}

models::ArchitecturePtr job_model(const config::JobConfig& cfg) {
  return job_model(cfg, data::Tokenizer::load(cfg.model.tokenizer_path).vocab_size());
}

config::KeyValues job_fingerprint(const config::JobConfig& cfg, const models::Architecture& model) {
  auto kv = config::shared_key_values(cfg);
  kv.emplace_back("model (built).family", model.family());
  for (const auto& [key, value] : model.dimensions()) kv.emplace_back("model (built)." + key, value);
  return kv;
}

}  // namespace troupe::train
