// Reads, overrides and validates the job config. One table of key specs (kKeys) drives all of
// it: TOML reading, command-line overrides, validation, the did-you-mean hints and known_keys(),
// so a new key is one line there.
#include "config/job_config.h"

#include "data/dataset_files.h"

// Debian ships toml++ as a shared library (its CMake target and pkg-config file define this);
// the fallback keeps a plain `g++ ... -ltomlplusplus` build from compiling toml++ inline.
#ifndef TOML_SHARED_LIB
#define TOML_SHARED_LIB 1
#endif
#include <toml++/toml.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <filesystem>
#include <functional>
#include <initializer_list>
#include <limits>
#include <map>
#include <optional>
#include <sstream>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>

namespace troupe::config {

namespace {

// ---------------------------------------------------------------------------------------------
// Messages

// Errors are promised to be one line (they go to a log line and an exit message).
[[noreturn]] void fail(std::string message) {
  std::replace(message.begin(), message.end(), '\n', ' ');
  throw ConfigError(message);
}

// A user-given string inside a message, with control characters made visible.
std::string quote(std::string_view s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\n') out += "\\n";
    else if (c == '\t') out += "\\t";
    else out += c;
  }
  return out + "'";
}

std::string show(int64_t v) { return std::to_string(v); }
std::string show(bool v) { return v ? "true" : "false"; }
std::string show(const std::string& v) { return quote(v); }
std::string show(double v) {
  std::ostringstream os;
  os << v;
  return os.str();
}
std::string show(const std::vector<std::string>& v) {
  std::string out = "[";
  for (const auto& s : v) out += (out.size() > 1 ? ", " : "") + quote(s);
  return out + "]";
}

size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] != b[j - 1])});
      diagonal = above;
    }
  }
  return row[b.size()];
}

// " (did you mean 'x'?)" for the candidate nearest to `word` by `project(candidate)`.
template <class Project = std::identity>
std::string did_you_mean(std::string_view word, const std::vector<std::string>& candidates, Project project = {}) {
  const std::string* best = nullptr;
  size_t best_distance = std::numeric_limits<size_t>::max();
  for (const auto& c : candidates) {
    size_t d = edit_distance(word, project(c));
    if (d < best_distance) best = &c, best_distance = d;
  }
  return best ? " (did you mean " + quote(*best) + "?)" : "";
}

// ---------------------------------------------------------------------------------------------
// Key specs

// Where a key's value lives inside a JobConfig; the alternative is the key's type.
using FieldRef = std::variant<int64_t*, double*, bool*, std::string*, std::vector<std::string>*>;

// Says what is wrong with a key's value as a full message naming the key; empty when fine.
// Sees the whole config for rules that relate two keys.
using Rule = std::function<std::string(std::string_view key, FieldRef field, const JobConfig& cfg)>;

struct KeySpec {
  std::string_view section;
  std::string_view name;
  FieldRef (*field)(JobConfig&);
  Rule rule;  // empty: any value of the right type

  std::string full_name() const { return std::string(section) + "." + std::string(name); }
};

template <auto Section, auto Field>
FieldRef field_of(JobConfig& cfg) {
  return &(cfg.*Section.*Field);
}

// Names a field once: gives the section and key strings and the accessor for KeySpec.
#define TROUPE_KEY(section, key) \
  #section, #key, &field_of<&JobConfig::section, &decltype(JobConfig::section)::key>
// The same for a section whose TOML name is dotted ([quantize.linear.float8]).
#define TROUPE_KEY_IN(name, section, key) \
  name, #key, &field_of<&JobConfig::section, &decltype(JobConfig::section)::key>

// A rule from a predicate on the value: "<key> must be <what>, got <value>".
template <class T, class Pred>
Rule must_be(std::string what, Pred ok) {
  return [what = std::move(what), ok](std::string_view key, FieldRef field, const JobConfig& cfg) -> std::string {
    const T& v = *std::get<T*>(field);
    if (ok(v, cfg)) return {};
    return std::string(key) + " must be " + what + ", got " + show(v);
  };
}

// Written as positive conditions so that NaN fails them.
Rule at_least(int64_t lo) {
  return must_be<int64_t>("at least " + show(lo), [lo](int64_t v, auto&) { return v >= lo; });
}
Rule positive_number() {
  return must_be<double>("greater than 0", [](double v, auto&) { return v > 0; });
}
Rule non_negative_number() {
  return must_be<double>("at least 0", [](double v, auto&) { return v >= 0; });
}
Rule in_unit_interval() {
  return must_be<double>("in [0, 1]", [](double v, auto&) { return v >= 0 && v <= 1; });
}
Rule in_unit_interval_open_above() {
  return must_be<double>("in [0, 1)", [](double v, auto&) { return v >= 0 && v < 1; });
}

Rule one_of(std::vector<std::string> allowed) {
  std::string what = "one of";
  for (const auto& c : allowed) what += (c == allowed.front() ? " " : " | ") + c;
  return must_be<std::string>(what, [allowed](const std::string& v, auto&) {
    return std::find(allowed.begin(), allowed.end(), v) != allowed.end();
  });
}

Rule one_of(std::initializer_list<std::string_view> choices) {
  return one_of(std::vector<std::string>(choices.begin(), choices.end()));
}

Rule not_empty() {
  return must_be<std::string>("a non-empty string", [](const std::string& v, auto&) { return !v.empty(); });
}

std::string missing_file(std::string_view key, const std::string& path) {
  if (std::filesystem::is_regular_file(path)) return {};
  return std::string(key) + ": file " + quote(path) + " not found";
}

Rule existing_file() {
  return [](std::string_view key, FieldRef field, const JobConfig&) { return missing_file(key, *std::get<std::string*>(field)); };
}

Rule positive_or_fill() {
  return must_be<int64_t>("-1 or at least 1", [](int64_t v, auto&) { return v == -1 || v >= 1; });
}

// Anyone who can reach the port can pause the job: beyond loopback a token is required.
Rule inspect_host_rule() {
  return must_be<std::string>("127.0.0.1 or localhost unless inspect.token is set", [](const std::string& v,
                                                                                      const JobConfig& cfg) {
    return v == "127.0.0.1" || v == "localhost" || v == "::1" || !cfg.inspect.token.empty();
  });
}

// A token of only blanks would be accepted from anyone who sends blanks: refused like a key typo.
Rule inspect_token_rule() {
  return must_be<std::string>("empty (no token) or a token with a non-blank character", [](const std::string& v, auto&) {
    return v.empty() || v.find_first_not_of(" \t\r\n\f\v") != std::string::npos;
  });
}

Rule decay_ratio_rule() {
  return must_be<double>("negative (decay over all steps after warmup) or in [0, 1]",
                         [](double v, auto&) { return v < 0 || (v >= 0 && v <= 1); });
}

Rule global_batch_rule() {
  return must_be<int64_t>("-1 or a positive multiple of training.local_batch_size", [](int64_t v, const JobConfig& cfg) {
    const int64_t local = cfg.training.local_batch_size;
    return v == -1 || (v > 0 && v % local == 0);
  });
}

Rule both(Rule first, Rule second) {
  return [first, second](std::string_view key, FieldRef field, const JobConfig& cfg) {
    std::string problem = first(key, field, cfg);
    return problem.empty() ? second(key, field, cfg) : problem;
  };
}

// "kjv" falls back to data/kjv/kjv.txt; the others have no built-in file. Checked on the
// dataset key so the error points at where the dataset was chosen.
template <auto Section>
Rule dataset_needs_path(std::string path_key) {
  return [path_key](std::string_view key, FieldRef field, const JobConfig& cfg) -> std::string {
    const std::string& v = *std::get<std::string*>(field);
    if (v == "kjv" || !(cfg.*Section).dataset_path.empty()) return {};
    if constexpr (std::is_same_v<decltype(Section), ValidationSection JobConfig::*>)
      if (!cfg.validation.enable) return {};
    return std::string(key) + " '" + v + "' needs " + path_key + " to name a file, directory or glob";
  };
}

Rule dataset_rule(Rule needs_path) { return both(one_of({"kjv", "text", "jsonl", "tokens"}), std::move(needs_path)); }

// A file, a directory or a glob, resolved as the data loader will resolve it.
Rule empty_or_existing_dataset_path() {
  return [](std::string_view key, FieldRef field, const JobConfig&) -> std::string {
    const std::string& path = *std::get<std::string*>(field);
    if (path.empty()) return {};
    if (path.find_first_of("*?[") == std::string::npos && !std::filesystem::is_directory(path))
      return missing_file(key, path);
    try {
      data::dataset_files(path);
      return {};
    } catch (const std::exception& e) {
      return std::string(key) + ": " + e.what();
    }
  };
}

Rule each_one_of(std::initializer_list<std::string_view> choices) {
  std::vector<std::string> allowed(choices.begin(), choices.end());
  std::string what = "a list of";
  for (const auto& c : allowed) what += (c == allowed.front() ? " " : " | ") + c;
  return must_be<std::vector<std::string>>(what, [allowed](const std::vector<std::string>& v, auto&) {
    return std::ranges::all_of(v, [&](const std::string& x) { return std::ranges::find(allowed, x) != allowed.end(); });
  });
}

// Loading and seeding act only on an enabled checkpoint; set otherwise they would be ignored.
Rule needs_checkpoint_enabled(Rule rule = {}) {
  return [rule](std::string_view key, FieldRef field, const JobConfig& cfg) -> std::string {
    const bool set = std::visit(
        [](auto* v) {
          using T = std::remove_pointer_t<decltype(v)>;
          if constexpr (std::is_same_v<T, int64_t>) return *v != -1;
          else if constexpr (std::is_same_v<T, bool>) return *v;
          else if constexpr (std::is_same_v<T, double>) return false;
          else return !v->empty();
        },
        field);
    if (set && !cfg.checkpoint.enable) return std::string(key) + " needs checkpoint.enable = true";
    return rule ? rule(key, field, cfg) : std::string();
  };
}

Rule empty_or_existing_directory() {
  return [](std::string_view key, FieldRef field, const JobConfig&) -> std::string {
    const std::string& path = *std::get<std::string*>(field);
    if (path.empty() || std::filesystem::is_directory(path)) return {};
    return std::string(key) + ": directory " + quote(path) + " not found";
  };
}

// selective_ac_option is a string because torchtitan also allows "op" (a per-op policy: keep the
// matmul and attention outputs, recompute the element-wise ops).
Rule selective_ac_option_rule() {
  return [](std::string_view key, FieldRef field, const JobConfig&) -> std::string {
    const std::string& v = *std::get<std::string*>(field);
    if (v == "op") return {};
    int64_t n = 0;
    auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
    if (ec == std::errc() && end == v.data() + v.size() && n >= 1) return {};
    return std::string(key) + " must be \"op\" or a positive integer (as a string, e.g. \"2\"), got " + quote(v);
  };
}

bool converts_float8(const JobConfig& cfg) {
  return std::ranges::find(cfg.model.converters, "quantize.linear.float8") != cfg.model.converters.end();
}

// A [quantize.linear.float8] recipe other than the default without the converter would be ignored.
Rule float8_needs_converter() {
  return must_be<std::string>("left at tensorwise unless model.converters has \"quantize.linear.float8\"",
                              [](const std::string& v, const JobConfig& cfg) {
                                return v == "tensorwise" || converts_float8(cfg);
                              });
}

// FSDP's FP8 all-gather sends one scale per weight (tensorwise): under the other recipes a weight's
// transposed use needs scales over its columns, which span the shards (torchao gathers FP8 only for
// tensorwise too).
Rule fsdp_float8_rule() {
  return must_be<bool>("false unless quantize.linear.float8.recipe_name is \"tensorwise\" (FP8 all-gather sends "
                       "one scale per weight)",
                       [](bool v, const JobConfig& cfg) {
                         return !v || !converts_float8(cfg) || cfg.float8.recipe_name == "tensorwise";
                       });
}

// The scales are precomputed for the FP8 all-gather; without it there is nothing to precompute.
Rule float8_precompute_rule() {
  return both(fsdp_float8_rule(),
              must_be<bool>("false unless quantize.linear.float8.enable_fsdp_float8_all_gather is true (the scales "
                            "are those of the FP8 all-gather)",
                            [](bool v, const JobConfig& cfg) { return !v || cfg.float8.enable_fsdp_float8_all_gather; }));
}

// Asynchronous TP's collective matmuls compute in bf16; with FP8 projections they would silently
// not be FP8.
Rule async_tp_rule() {
  return must_be<bool>("false while model.converters has \"quantize.linear.float8\" (the collective matmuls of "
                       "asynchronous TP do not compute in FP8 yet)",
                       [](bool v, const JobConfig& cfg) { return !v || !converts_float8(cfg); });
}

// Rules run in this order, so a rule that reads another key comes after that key's own rule.
const std::vector<KeySpec>& key_specs() {
  static const std::vector<KeySpec> specs = {
      {TROUPE_KEY(job, dump_folder), not_empty()},
      {TROUPE_KEY(job, description), {}},
      {TROUPE_KEY(job, seed), {}},
      {TROUPE_KEY(job, device), one_of({"auto", "cpu", "cuda"})},
      {TROUPE_KEY(job, local_ranks), positive_or_fill()},

      // Checked against the registered families where the model is configured (models/registry.h).
      {TROUPE_KEY(model, name), not_empty()},
      {TROUPE_KEY(model, flavor), {}},
      {TROUPE_KEY(model, tokenizer_path), existing_file()},
      {TROUPE_KEY(model, converters), each_one_of({"quantize.linear.float8"})},

      {TROUPE_KEY(optimizer, name), one_of({"AdamW", "Adam"})},
      {TROUPE_KEY(optimizer, lr), positive_number()},
      {TROUPE_KEY(optimizer, beta1), in_unit_interval_open_above()},
      {TROUPE_KEY(optimizer, beta2), in_unit_interval_open_above()},
      {TROUPE_KEY(optimizer, eps), positive_number()},
      {TROUPE_KEY(optimizer, weight_decay), non_negative_number()},

      {TROUPE_KEY(lr_scheduler, warmup_steps), at_least(0)},
      {TROUPE_KEY(lr_scheduler, decay_ratio), decay_ratio_rule()},
      {TROUPE_KEY(lr_scheduler, decay_type), one_of({"linear", "cosine", "sqrt"})},
      {TROUPE_KEY(lr_scheduler, min_lr_factor), in_unit_interval()},

      {TROUPE_KEY(training, local_batch_size), at_least(1)},
      {TROUPE_KEY(training, global_batch_size), global_batch_rule()},
      {TROUPE_KEY(training, seq_len), at_least(2)},
      {TROUPE_KEY(training, max_norm), positive_number()},
      {TROUPE_KEY(training, steps), at_least(1)},
      {TROUPE_KEY(training, dataset), dataset_rule(dataset_needs_path<&JobConfig::training>("training.dataset_path"))},
      {TROUPE_KEY(training, dataset_path), empty_or_existing_dataset_path()},
      {TROUPE_KEY(training, dataset_text_field), not_empty()},
      {TROUPE_KEY(training, deterministic), {}},
      {TROUPE_KEY(training, attention_mask), one_of({"causal", "block_causal"})},
      {TROUPE_KEY(training, mixed_precision_param), one_of({"bfloat16", "float32"})},
      // Gradients are reduced across ranks only once there are several; fp32 is the one choice now.
      {TROUPE_KEY(training, mixed_precision_reduce), one_of({"float32"})},

      {TROUPE_KEY(validation, enable), {}},
      {TROUPE_KEY(validation, dataset), dataset_rule(dataset_needs_path<&JobConfig::validation>("validation.dataset_path"))},
      {TROUPE_KEY(validation, dataset_path), empty_or_existing_dataset_path()},
      {TROUPE_KEY(validation, freq), at_least(1)},
      {TROUPE_KEY(validation, steps), at_least(1)},

      {TROUPE_KEY(metrics, log_freq), at_least(1)},
      {TROUPE_KEY(metrics, save_for_all_ranks), {}},
      {TROUPE_KEY(metrics, enable_tensorboard), {}},

      {TROUPE_KEY(checkpoint, enable), {}},
      {TROUPE_KEY(checkpoint, folder), not_empty()},
      {TROUPE_KEY(checkpoint, interval), at_least(1)},
      {TROUPE_KEY(checkpoint, async_mode), one_of({"disabled", "async", "async_with_pinned_mem"})},
      {TROUPE_KEY(checkpoint, keep_latest_k), at_least(0)},
      {TROUPE_KEY(checkpoint, load_step), needs_checkpoint_enabled(at_least(-1))},
      {TROUPE_KEY(checkpoint, initial_load_path), needs_checkpoint_enabled(empty_or_existing_directory())},
      {TROUPE_KEY(checkpoint, initial_load_model_only), {}},
      {TROUPE_KEY(checkpoint, last_save_model_only), {}},
      {TROUPE_KEY(checkpoint, save_on_stop), {}},
      {TROUPE_KEY(checkpoint, export_dtype), one_of({"float32", "bfloat16", "float16"})},
      {TROUPE_KEY(checkpoint, exclude_from_loading),
       each_one_of({"model", "optimizer", "lr_scheduler", "dataloader", "train_state", "rng"})},
      {TROUPE_KEY(checkpoint, create_seed_checkpoint), needs_checkpoint_enabled()},

      {TROUPE_KEY(parallelism, data_parallel_replicate_degree), at_least(1)},
      {TROUPE_KEY(parallelism, data_parallel_shard_degree), positive_or_fill()},
      {TROUPE_KEY(parallelism, tensor_parallel_degree), at_least(1)},
      {TROUPE_KEY(parallelism, disable_loss_parallel), {}},
      {TROUPE_KEY(parallelism, enable_async_tensor_parallel), async_tp_rule()},
      {TROUPE_KEY(parallelism, pipeline_parallel_degree), at_least(1)},
      {TROUPE_KEY(parallelism, context_parallel_degree), at_least(1)},
      {TROUPE_KEY(parallelism, context_parallel_rotate_method), one_of({"allgather", "ring"})},
      {TROUPE_KEY(parallelism, expert_parallel_degree), at_least(1)},
      {TROUPE_KEY(parallelism, fsdp_reshard_after_forward), one_of({"default", "always", "never"})},
      {TROUPE_KEY(parallelism, pipeline_parallel_schedule),
       one_of({"GPipe", "1F1B", "Interleaved1F1B", "ZBVZeroBubble", "InterleavedZeroBubble"})},
      {TROUPE_KEY(parallelism, pipeline_parallel_microbatch_size), at_least(1)},
      {TROUPE_KEY(parallelism, pipeline_parallel_layers_per_stage),
       must_be<int64_t>("-1 (unset) or at least 1", [](int64_t v, auto&) { return v == -1 || v >= 1; })},
      {TROUPE_KEY(parallelism, pipeline_parallel_split_points),
       must_be<std::vector<std::string>>("a list of \"layers.N\" in increasing N", [](const std::vector<std::string>& v,
                                                                                    auto&) {
         int64_t last = 0;
         for (const auto& x : v) {
           if (!x.starts_with("layers.") || x.size() == 7 ||
               x.find_first_not_of("0123456789", 7) != std::string::npos)
             return false;
           const auto n = std::stoll(x.substr(7));
           if (n <= last) return false;
           last = n;
         }
         return true;
       })},
      {TROUPE_KEY(profiling, enable_profiling), {}},
      {TROUPE_KEY(profiling, save_traces_folder), not_empty()},
      {TROUPE_KEY(inspect, enable), {}},
      {TROUPE_KEY(inspect, host), inspect_host_rule()},
      {TROUPE_KEY(inspect, port), must_be<int64_t>("a port in 0..65535 (0: any free port)",
                                                   [](int64_t v, auto&) { return v >= 0 && v <= 65535; })},
      {TROUPE_KEY(inspect, token), inspect_token_rule()},
      {TROUPE_KEY(comm, init_timeout_seconds), at_least(1)},
      {TROUPE_KEY(comm, train_timeout_seconds), at_least(1)},
      {TROUPE_KEY(comm, trace_buf_size), at_least(0)},
      {TROUPE_KEY(comm, save_traces_folder), not_empty()},
      {TROUPE_KEY(comm, save_traces_file_prefix), {}},

      {TROUPE_KEY(activation_checkpoint, mode), one_of({"none", "full", "selective"})},
      {TROUPE_KEY(activation_checkpoint, selective_ac_option), selective_ac_option_rule()},

      {TROUPE_KEY_IN("quantize.linear.float8", float8, recipe_name),
       both(one_of({"tensorwise", "rowwise", "rowwise_with_gw_hp", "blockwise"}), float8_needs_converter())},
      {TROUPE_KEY_IN("quantize.linear.float8", float8, filter_fqns), {}},
      {TROUPE_KEY_IN("quantize.linear.float8", float8, enable_fsdp_float8_all_gather), fsdp_float8_rule()},
      {TROUPE_KEY_IN("quantize.linear.float8", float8, precompute_float8_dynamic_scale_for_fsdp),
       float8_precompute_rule()},
  };
  return specs;
}

#undef TROUPE_KEY
#undef TROUPE_KEY_IN

std::vector<std::string> section_names() {
  std::vector<std::string> names;
  for (const auto& spec : key_specs())
    if (names.empty() || names.back() != spec.section) names.emplace_back(spec.section);
  return names;
}

const KeySpec* find_key(std::string_view full_name) {
  for (const auto& spec : key_specs())
    if (spec.full_name() == full_name) return &spec;
  return nullptr;
}

// A boolean key may be given as a bare flag on the command line.
bool is_flag(const KeySpec& spec) {
  JobConfig probe;
  return std::holds_alternative<bool*>(spec.field(probe));
}

// A [model] key that is none of the fixed ones is a dimension of the model's family, unless it
// looks like a misspelt fixed key.
bool is_model_dimension(std::string_view name) {
  if (!name.starts_with("model.") || name.size() == 6) return false;
  const auto key = name.substr(6);
  for (const auto& spec : key_specs())
    if (spec.section == "model" && edit_distance(key, spec.name) <= 2) return false;
  return key.find_first_not_of("abcdefghijklmnopqrstuvwxyz0123456789_") == std::string_view::npos;
}

// A TOML value as the config text of a dimension; none for strings, arrays and tables.
std::optional<std::string> dimension_text(const toml::node& n) {
  if (auto i = n.value_exact<int64_t>()) return std::to_string(*i);
  if (auto b = n.value_exact<bool>()) return *b ? "true" : "false";
  if (auto d = n.value_exact<double>()) {
    if (!std::isfinite(*d)) return std::nullopt;
    char buf[32];
    return std::string(buf, std::to_chars(buf, buf + sizeof buf, *d).ptr);
  }
  return std::nullopt;
}

// The same key in another section first (training.lr -> optimizer.lr), else the nearest name.
std::string unknown_key(std::string_view name) {
  const auto dot = name.find('.');
  if (dot != std::string_view::npos)
    for (const auto& spec : key_specs())
      if (spec.name == name.substr(dot + 1))
        return "unknown key " + quote(name) + " (did you mean " + quote(spec.full_name()) + "?)";
  return "unknown key " + quote(name) + did_you_mean(name, known_keys());
}

// ---------------------------------------------------------------------------------------------
// Typed values from TOML nodes and from command-line text

template <class T>
struct ValueKind;

template <>
struct ValueKind<int64_t> {
  static constexpr std::string_view noun = "an integer";
  static std::optional<int64_t> from(const toml::node& n) { return n.value_exact<int64_t>(); }
  static std::optional<int64_t> from(std::string_view s) {
    int64_t v = 0;
    auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (ec != std::errc() || end != s.data() + s.size()) return std::nullopt;
    return v;
  }
};

// Integers are fine where a float is wanted; infinities and NaN never are.
template <>
struct ValueKind<double> {
  static constexpr std::string_view noun = "a finite number";
  static std::optional<double> finite(std::optional<double> v) {
    return v && std::isfinite(*v) ? v : std::nullopt;
  }
  static std::optional<double> from(const toml::node& n) {
    if (auto i = n.value_exact<int64_t>()) return static_cast<double>(*i);
    return finite(n.value_exact<double>());
  }
  static std::optional<double> from(std::string_view s) {
    double v = 0;
    auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (ec != std::errc() || end != s.data() + s.size()) return std::nullopt;
    return finite(v);
  }
};

template <>
struct ValueKind<bool> {
  static constexpr std::string_view noun = "true or false";
  static std::optional<bool> from(const toml::node& n) { return n.value_exact<bool>(); }
  static std::optional<bool> from(std::string_view s) {
    if (s == "true") return true;
    if (s == "false") return false;
    return std::nullopt;
  }
};

template <>
struct ValueKind<std::string> {
  static constexpr std::string_view noun = "a string";
  static std::optional<std::string> from(const toml::node& n) { return n.value_exact<std::string>(); }
  static std::optional<std::string> from(std::string_view s) { return std::string(s); }
};

// A TOML array of strings, or comma-separated words on the command line (as torchtitan's CLI).
template <>
struct ValueKind<std::vector<std::string>> {
  static constexpr std::string_view noun = "a list of strings";
  static std::optional<std::vector<std::string>> from(const toml::node& n) {
    const auto* array = n.as_array();
    if (!array) return std::nullopt;
    std::vector<std::string> out;
    for (const auto& item : *array) {
      auto s = item.value_exact<std::string>();
      if (!s) return std::nullopt;
      out.push_back(std::move(*s));
    }
    return out;
  }
  static std::optional<std::vector<std::string>> from(std::string_view s) {
    std::vector<std::string> out;
    while (!s.empty()) {
      const auto comma = s.find(',');
      out.emplace_back(s.substr(0, comma));
      s = comma == std::string_view::npos ? std::string_view() : s.substr(comma + 1);
    }
    return out;
  }
};

// What the user gave, for "got ...": the TOML type, or the command-line text.
std::string describe(const toml::node& n) {
  std::ostringstream os;
  os << n.type();
  return os.str();
}
std::string describe(std::string_view text) { return quote(text); }

// Stores `source` (a TOML node or override text) into the key's field; `where` prefixes errors.
template <class Source>
void assign(const KeySpec& spec, JobConfig& cfg, const Source& source, const std::string& where) {
  std::visit(
      [&](auto* field) {
        using T = std::remove_pointer_t<decltype(field)>;
        auto value = ValueKind<T>::from(source);
        if (!value)
          fail(where + ": " + spec.full_name() + " must be " + std::string(ValueKind<T>::noun) + ", got " +
               describe(source));
        *field = std::move(*value);
      },
      spec.field(cfg));
}

// ---------------------------------------------------------------------------------------------
// Loading

// Keys are located by line, values by line and column (where a type error points).
std::string at_line(const std::string& file, const toml::source_region& src) {
  return file + ":" + std::to_string(src.begin.line);
}
std::string at_column(const std::string& file, const toml::source_region& src) {
  return at_line(file, src) + ":" + std::to_string(src.begin.column);
}

// toml++ tables are sorted by key; errors should follow the file instead.
std::vector<std::pair<const toml::key*, const toml::node*>> in_file_order(const toml::table& table) {
  std::vector<std::pair<const toml::key*, const toml::node*>> entries;
  for (const auto& [key, node] : table) entries.emplace_back(&key, &node);
  std::sort(entries.begin(), entries.end(), [](const auto& a, const auto& b) {
    const auto &pa = a.first->source().begin, &pb = b.first->source().begin;
    return std::pair(pa.line, pa.column) < std::pair(pb.line, pb.column);
  });
  return entries;
}

// Builds a JobConfig and remembers where each key's value came from, so validation errors
// can point at it.
class Loader {
 public:
  void read_file(const std::string& path) {
    if (std::filesystem::is_directory(path)) fail("config file " + quote(path) + " is a directory, not a TOML file");
    if (!std::filesystem::is_regular_file(path)) fail("config file " + quote(path) + " not found");
    toml::table root;
    try {
      root = toml::parse_file(path);
    } catch (const toml::parse_error& e) {
      fail(at_column(path, e.source()) + ": " + std::string(e.description()));
    }
    for (const auto& [key, node] : in_file_order(root)) read_section(path, *key, *node);
  }

  void apply(const Override& o) {
    const KeySpec* spec = find_key(o.key);
    if (!spec && is_model_dimension(o.key)) return set_dimension(o.key.substr(6), o.value, "--" + o.key);
    if (!spec) fail("--" + o.key + ": " + unknown_key(o.key));
    origins_[o.key] = "--" + o.key;
    assign(*spec, cfg_, std::string_view(o.value), origins_[o.key]);
  }

  JobConfig validate() const {
    JobConfig cfg = cfg_;
    for (const auto& spec : key_specs()) {
      if (!spec.rule) continue;
      std::string problem = spec.rule(spec.full_name(), spec.field(cfg), cfg);
      if (problem.empty()) continue;
      auto it = origins_.find(spec.full_name());
      fail(it == origins_.end() ? problem : it->second + ": " + problem);
    }
    return cfg;
  }

 private:
  void read_section(const std::string& path, const toml::key& section, const toml::node& node) {
    const auto* table = node.as_table();
    if (!table) {
      // A key above every [section]: suggest the known key with the nearest key part.
      fail(at_line(path, section.source()) + ": key " + quote(section.str()) +
           " must be inside a section" + did_you_mean(section.str(), known_keys(), [](const std::string& k) {
             return std::string_view(k).substr(k.find('.') + 1);
           }));
    }
    read_table(path, std::string(section.str()), section.source(), *table);
  }

  // `name` is a section, or a part of a dotted one ("quantize" of [quantize.linear.float8]).
  void read_table(const std::string& path, const std::string& name, const toml::source_region& where,
                  const toml::table& table) {
    const bool is_section = std::ranges::any_of(key_specs(), [&](const KeySpec& s) { return s.section == name; });
    const bool is_prefix =
        std::ranges::any_of(key_specs(), [&](const KeySpec& s) { return s.section.starts_with(name + "."); });
    if (!is_section && !is_prefix)
      fail(at_line(path, where) + ": unknown section " + quote(name) + did_you_mean(name, section_names()));
    for (const auto& [key, value] : in_file_order(table)) {
      if (const auto* inner = value->as_table(); inner && !is_section) {
        read_table(path, name + "." + std::string(key->str()), key->source(), *inner);
        continue;
      }
      if (!is_section)
        fail(at_line(path, key->source()) + ": key " + quote(std::string(key->str())) + " in " + quote(name) +
             " belongs in a section" + did_you_mean(name + "." + std::string(key->str()), section_names()));
      read_key(path, name, *key, *value);
    }
  }

  void read_key(const std::string& path, const std::string& section, const toml::key& key, const toml::node& value) {
    const std::string name = section + "." + std::string(key.str());
    const KeySpec* spec = find_key(name);
    if (!spec && is_model_dimension(name)) {
      const auto where = at_column(path, value.source());
      const auto text = dimension_text(value);
      if (!text) fail(where + ": " + name + " must be a number or true or false, got " + describe(value));
      set_dimension(std::string(key.str()), *text, where);
      return;
    }
    if (!spec) fail(at_line(path, key.source()) + ": " + unknown_key(name));
    origins_[name] = at_column(path, value.source());
    assign(*spec, cfg_, value, origins_[name]);
  }

  void set_dimension(const std::string& key, const std::string& value, const std::string& origin) {
    auto& dims = cfg_.model.dimensions;
    std::erase_if(dims, [&](const config::ModelDimension& d) { return d.key == key; });
    dims.push_back({key, value, origin});
  }

  JobConfig cfg_;
  std::map<std::string, std::string> origins_;  // "section.key" -> "file:line:col" or "--section.key"
};

}  // namespace

std::vector<std::string> known_keys() {
  std::vector<std::string> keys;
  for (const auto& spec : key_specs()) keys.push_back(spec.full_name());
  return keys;
}

std::vector<std::pair<std::string, std::string>> key_values(const JobConfig& cfg) {
  JobConfig copy = cfg;  // key specs hand out mutable field pointers
  std::vector<std::pair<std::string, std::string>> out;
  for (const auto& spec : key_specs()) {
    const std::string text = std::visit(
        [](auto* v) -> std::string {
          using T = std::remove_pointer_t<decltype(v)>;
          if constexpr (std::is_same_v<T, bool>) return *v ? "true" : "false";
          else if constexpr (std::is_same_v<T, int64_t>) return std::to_string(*v);
          else if constexpr (std::is_same_v<T, double>) {
            char buf[32];
            return std::string(buf, std::to_chars(buf, buf + sizeof buf, *v).ptr);  // shortest exact
          } else {
            std::ostringstream os;
            if constexpr (std::is_same_v<T, std::string>) {
              os << toml::value<std::string>(*v);
            } else {
              toml::array a;
              for (const auto& s : *v) a.push_back(s);
              os << a;
            }
            return os.str();
          }
        },
        spec.field(copy));
    out.emplace_back(spec.full_name(), text);
  }
  for (const auto& d : cfg.model.dimensions) out.emplace_back("model." + d.key, d.value);
  return out;
}

std::vector<Override> parse_override_args(const std::vector<std::string>& args) {
  std::vector<Override> overrides;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& word = args[i];
    if (!word.starts_with("--"))
      fail("unexpected argument " + quote(word) + " (overrides are written --section.key value)");
    const std::string body = word.substr(2);
    const size_t eq = body.find('=');
    const std::string key = body.substr(0, eq);
    const KeySpec* spec = find_key(key);
    if (!spec && !is_model_dimension(key)) fail("--" + key + ": " + unknown_key(key));
    if (eq != std::string::npos) {
      overrides.push_back({key, body.substr(eq + 1)});
    } else if (i + 1 < args.size() && !args[i + 1].starts_with("--")) {
      overrides.push_back({key, args[++i]});
    } else if (!spec || is_flag(*spec)) {
      overrides.push_back({key, "true"});
    } else {
      fail(word + ": needs a value (--" + key + " VALUE or --" + key + "=VALUE)");
    }
  }
  return overrides;
}

std::vector<std::string> config_warnings(const std::string& path, const JobConfig& cfg) {
  std::vector<std::string> out;
  if (!path.empty()) {
    try {
      const auto root = toml::parse_file(path);
      bool any = false;
      for (const auto& [section, node] : root)
        if (const auto* t = node.as_table(); t && !t->empty()) any = true;
      if (!any) out.push_back(path + " sets no keys: every value is a default");
    } catch (const toml::parse_error&) {
    }
  }
  if (cfg.lr_scheduler.warmup_steps > cfg.training.steps)
    out.push_back("lr_scheduler.warmup_steps (" + std::to_string(cfg.lr_scheduler.warmup_steps) +
                  ") is more than training.steps (" + std::to_string(cfg.training.steps) +
                  "): the learning rate never reaches optimizer.lr");
  return out;
}

JobConfig load_job_config(const std::string& path, const std::vector<Override>& overrides) {
  Loader loader;
  if (!path.empty()) loader.read_file(path);
  for (const auto& o : overrides) loader.apply(o);
  return loader.validate();
}

}  // namespace troupe::config
