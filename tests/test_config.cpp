// The job config: TOML files, command-line overrides, and one-line errors that say where.
#include <catch2/catch.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "config/job_config.h"
#include "models/common/decoder_architecture.h"
#include "train/job_model.h"
#include "test_support.h"

namespace fs = std::filesystem;
using namespace troupe::config;
using Catch::Matchers::Contains;
using Catch::Matchers::StartsWith;

namespace {

// A fresh directory per test, removed afterwards.
struct TempDir : troupe::testing::TempDir {
  // Where load_text writes its TOML.
  std::string job_file() const { return file("job.toml"); }

  // Validation insists the tokenizer file exists; its contents do not matter here.
  std::string tokenizer() const { return write("tokenizer.json", "{}"); }
};

// Loads `toml`, written to dir.job_file(), with a dummy tokenizer.
JobConfig load_text(const TempDir& dir, const std::string& toml, std::vector<Override> extra = {}) {
  const auto path = dir.write("job.toml", toml);
  std::vector<Override> overrides = {{"model.tokenizer_path", dir.tokenizer()}};
  overrides.insert(overrides.end(), extra.begin(), extra.end());
  return load_job_config(path, overrides);
}

// The message of the ConfigError that `f` must throw; every such message is one line.
std::string config_error(const std::function<void()>& f) {
  try {
    f();
  } catch (const ConfigError& e) {
    const std::string message = e.what();
    CHECK(message.find('\n') == std::string::npos);
    return message;
  }
  FAIL("no ConfigError thrown");
  return {};
}

std::string override_error(const TempDir& dir, const std::string& key, const std::string& value) {
  return config_error([&] { load_job_config("", {{"model.tokenizer_path", dir.tokenizer()}, {key, value}}); });
}

}  // namespace

TEST_CASE("defaults match the header and validate", "[config]") {
  TempDir dir;
  const auto cfg = load_job_config("", {{"model.tokenizer_path", dir.tokenizer()}});
  CHECK(cfg.job.device == "auto");
  CHECK(cfg.model.name == "llama3");
  CHECK(cfg.model.flavor == "debugmodel");
  CHECK(cfg.model.tokenizer_path == dir.tokenizer());
  CHECK(cfg.optimizer.name == "AdamW");
  CHECK(cfg.optimizer.lr == Approx(8e-4));
  CHECK(cfg.lr_scheduler.warmup_steps == 200);
  CHECK(cfg.lr_scheduler.decay_ratio < 0);
  CHECK(cfg.training.steps == 10000);
  CHECK(cfg.training.seq_len == 2048);
  CHECK(cfg.training.global_batch_size == -1);
  CHECK_FALSE(cfg.checkpoint.enable);
  CHECK(cfg.parallelism.data_parallel_shard_degree == -1);
  CHECK(cfg.activation_checkpoint.selective_ac_option == "2");
}

TEST_CASE("the shipped configs/llama3_debug.toml loads", "[config]") {
  TempDir dir;
  const auto cfg = load_job_config("configs/llama3_debug.toml", {{"model.tokenizer_path", dir.tokenizer()}});
  CHECK(cfg.job.dump_folder == "./outputs/llama3_debug");
  CHECK(cfg.job.seed == 42);
  CHECK(cfg.optimizer.lr == Approx(8e-4));
  CHECK(cfg.optimizer.eps == Approx(1e-8));
  CHECK(cfg.lr_scheduler.warmup_steps == 2);
  CHECK(cfg.lr_scheduler.decay_ratio == Approx(0.8));
  CHECK(cfg.training.local_batch_size == 8);
  CHECK(cfg.training.seq_len == 256);
  CHECK(cfg.training.steps == 100);
  CHECK(cfg.training.dataset == "kjv");
  CHECK(cfg.training.dataset_path.empty());
  CHECK(cfg.metrics.log_freq == 10);
  CHECK(cfg.activation_checkpoint.mode == "none");
}

TEST_CASE("known_keys lists every section.key once", "[config]") {
  const auto keys = known_keys();
  CHECK(keys.size() == 83);
  CHECK(std::find(keys.begin(), keys.end(), "quantize.linear.float8.recipe_name") != keys.end());
  CHECK(std::find(keys.begin(), keys.end(), "training.steps") != keys.end());
  CHECK(std::find(keys.begin(), keys.end(), "validation.dataset_path") != keys.end());
  CHECK(std::find(keys.begin(), keys.end(), "activation_checkpoint.selective_ac_option") != keys.end());
  auto sorted = keys;
  std::sort(sorted.begin(), sorted.end());
  CHECK(std::adjacent_find(sorted.begin(), sorted.end()) == sorted.end());
}

TEST_CASE("TOML values are read by type; integers are fine for floats", "[config]") {
  TempDir dir;
  const auto cfg = load_text(dir,
                             "[training]\nsteps = 20\ndeterministic = true\nmax_norm = 2\n"
                             "[optimizer]\nlr = 1\n[job]\ndescription = \"hi\"\n");
  CHECK(cfg.training.steps == 20);
  CHECK(cfg.training.deterministic);
  CHECK(cfg.training.max_norm == 2.0);
  CHECK(cfg.optimizer.lr == 1.0);
  CHECK(cfg.job.description == "hi");
}

TEST_CASE("TOML dotted keys at the top level name section and key", "[config]") {
  TempDir dir;
  CHECK(load_text(dir, "training.steps = 7\n").training.steps == 7);
}

TEST_CASE("override words: both syntaxes, bare booleans, negative values", "[config]") {
  const auto overrides = parse_override_args({"--training.steps", "20", "--optimizer.lr=3e-4", "--training.deterministic",
                                              "--lr_scheduler.decay_ratio", "-1", "--metrics.save_for_all_ranks"});
  REQUIRE(overrides.size() == 5);
  CHECK(overrides[0].key == "training.steps");
  CHECK(overrides[0].value == "20");
  CHECK(overrides[1].key == "optimizer.lr");
  CHECK(overrides[1].value == "3e-4");
  CHECK(overrides[2].key == "training.deterministic");
  CHECK(overrides[2].value == "true");
  CHECK(overrides[3].value == "-1");
  CHECK(overrides[4].key == "metrics.save_for_all_ranks");
  CHECK(overrides[4].value == "true");
}

TEST_CASE("overrides replace file values, in order, parsed by the key's type", "[config]") {
  TempDir dir;
  auto args = parse_override_args({"--training.steps", "20", "--optimizer.lr=3e-4", "--training.deterministic",
                                   "--optimizer.beta2", "1e-1", "--training.steps=30", "--job.description", "a b"});
  const auto cfg = load_text(dir, "[training]\nsteps = 5\n", args);
  CHECK(cfg.training.steps == 30);
  CHECK(cfg.optimizer.lr == Approx(3e-4));
  CHECK(cfg.optimizer.beta2 == Approx(0.1));
  CHECK(cfg.training.deterministic);
  CHECK(cfg.job.description == "a b");
}

TEST_CASE("boolean overrides take true or false", "[config]") {
  TempDir dir;
  const std::string tok = "--model.tokenizer_path=" + dir.tokenizer();
  auto off = load_job_config("", parse_override_args({tok, "--training.deterministic", "false"}));
  CHECK_FALSE(off.training.deterministic);
  auto on = load_job_config("", parse_override_args({tok, "--training.deterministic=true"}));
  CHECK(on.training.deterministic);
  auto bare_then_key = load_job_config("", parse_override_args({tok, "--training.deterministic", "--training.steps", "3"}));
  CHECK(bare_then_key.training.deterministic);
  CHECK(bare_then_key.training.steps == 3);
}

TEST_CASE("a float key takes an integer override", "[config]") {
  TempDir dir;
  const auto cfg = load_job_config("", {{"model.tokenizer_path", dir.tokenizer()}, {"training.max_norm", "3"}});
  CHECK(cfg.training.max_norm == 3.0);
}

TEST_CASE("edge values inside the ranges are accepted", "[config]") {
  TempDir dir;
  const auto cfg = load_job_config("", {{"model.tokenizer_path", dir.tokenizer()},
                                        {"lr_scheduler.decay_ratio", "1"},
                                        {"lr_scheduler.min_lr_factor", "0"},
                                        {"lr_scheduler.warmup_steps", "0"},
                                        {"optimizer.beta1", "0"},
                                        {"optimizer.weight_decay", "0"},
                                        {"training.global_batch_size", "16"},
                                        {"training.seq_len", "2"},
                                        {"parallelism.data_parallel_shard_degree", "1"},
                                        {"activation_checkpoint.mode", "selective"},
                                        {"activation_checkpoint.selective_ac_option", "3"}});
  CHECK(cfg.training.global_batch_size == 16);
  CHECK(cfg.activation_checkpoint.selective_ac_option == "3");
}

TEST_CASE("datasets: kjv with an optional file, text with a required one", "[config]") {
  TempDir dir;
  const auto corpus = dir.write("corpus.txt", "hello");
  const auto tok = dir.tokenizer();
  auto text = load_job_config("", {{"model.tokenizer_path", tok}, {"training.dataset", "text"}, {"training.dataset_path", corpus}});
  CHECK(text.training.dataset_path == corpus);
  auto kjv = load_job_config("", {{"model.tokenizer_path", tok}, {"training.dataset_path", corpus}});
  CHECK(kjv.training.dataset == "kjv");

  CHECK(override_error(dir, "training.dataset", "text") ==
        "--training.dataset: training.dataset 'text' needs training.dataset_path to name a file, directory or glob");
  CHECK_THAT(override_error(dir, "training.dataset", "wiki"),
             Contains("training.dataset must be one of kjv | text | jsonl | tokens"));
  const auto missing = dir.file("nope.txt");
  CHECK(override_error(dir, "training.dataset_path", missing) ==
        "--training.dataset_path: training.dataset_path: file '" + missing + "' not found");
  CHECK_THAT(override_error(dir, "training.dataset_path", dir.file("*.nomatch")),
             Contains("training.dataset_path: dataset path") && Contains("names no file"));
  // Directories and globs name the files the loader reads.
  auto dir_cfg = load_job_config("", {{"model.tokenizer_path", tok}, {"training.dataset", "jsonl"},
                                      {"training.dataset_path", dir.path().string()}, {"training.dataset_text_field", "body"}});
  CHECK(dir_cfg.training.dataset_text_field == "body");
  CHECK_NOTHROW(load_job_config("", {{"model.tokenizer_path", tok}, {"training.dataset_path", dir.file("*.txt")}}));
  CHECK_THAT(override_error(dir, "training.dataset_text_field", ""), Contains("a non-empty string"));
}

TEST_CASE("validation: its dataset is checked like training's once enabled", "[config]") {
  TempDir dir;
  const auto tok = dir.tokenizer();
  const auto corpus = dir.write("valid.txt", "hello");
  auto off = load_job_config("", {{"model.tokenizer_path", tok}, {"validation.dataset", "text"},
                                  {"validation.dataset_path", corpus}, {"validation.freq", "5"}, {"validation.steps", "3"}});
  CHECK_FALSE(off.validation.enable);
  CHECK(off.validation.freq == 5);
  CHECK(off.validation.steps == 3);
  CHECK(off.validation.dataset_path == corpus);
  auto on = load_job_config("", {{"model.tokenizer_path", tok}, {"validation.enable", "true"}, {"validation.dataset", "text"},
                                 {"validation.dataset_path", corpus}});
  CHECK(on.validation.enable);
  // A path-less text dataset is fine while validation is off, an error once it is on.
  CHECK_NOTHROW(load_job_config("", {{"model.tokenizer_path", tok}, {"validation.dataset", "text"}}));
  CHECK_THAT(config_error([&] {
               load_job_config("", {{"model.tokenizer_path", tok}, {"validation.enable", "true"}, {"validation.dataset", "text"}});
             }),
             Contains("validation.dataset 'text' needs validation.dataset_path"));
  CHECK_THAT(override_error(dir, "validation.dataset", "csv"), Contains("validation.dataset must be one of kjv | text | jsonl | tokens"));
  CHECK_THAT(override_error(dir, "validation.freq", "0"), Contains("validation.freq must be at least 1"));
  CHECK_THAT(override_error(dir, "validation.steps", "0"), Contains("validation.steps must be at least 1"));
}

TEST_CASE("unknown key in a file: file, line and the closest key", "[config]") {
  TempDir dir;
  const auto path = dir.job_file();
  const auto message = config_error([&] { load_text(dir, "# comment\n[training]\nseq_len = 8\nstep = 20\n", {}); });
  CHECK(message == path + ":4: unknown key 'training.step' (did you mean 'training.steps'?)");
}

TEST_CASE("unknown section: file, line and the closest section", "[config]") {
  TempDir dir;
  const auto path = dir.job_file();
  const auto message = config_error([&] { load_text(dir, "[job]\nseed = 1\n\n[trainig]\nsteps = 20\n", {}); });
  CHECK(message == path + ":4: unknown section 'trainig' (did you mean 'training'?)");
}

TEST_CASE("a key outside any section points at where it belongs", "[config]") {
  TempDir dir;
  const auto path = dir.job_file();
  const auto message = config_error([&] { load_text(dir, "steps = 20\n[training]\n", {}); });
  CHECK_THAT(message, StartsWith(path + ":1: key 'steps' must be inside a section") &&
                          Contains("did you mean 'training.steps'"));
}

TEST_CASE("errors follow the file's order, not the keys' order", "[config]") {
  TempDir dir;
  const auto path = dir.job_file();
  const auto message = config_error([&] { load_text(dir, "[training]\nzzz = 1\naaa = 2\n", {}); });
  CHECK_THAT(message, StartsWith(path + ":2: unknown key 'training.zzz'"));
}

TEST_CASE("wrong type in a file: file:line:column, wanted and got", "[config]") {
  TempDir dir;
  const auto path = dir.job_file();
  CHECK(config_error([&] { load_text(dir, "[training]\nsteps = \"20\"\n", {}); }) ==
        path + ":2:9: training.steps must be an integer, got string");
  // 20.0 is a float, not an integer, even though its value is whole.
  CHECK(config_error([&] { load_text(dir, "[training]\nsteps = 20.0\n", {}); }) ==
        path + ":2:9: training.steps must be an integer, got floating-point");
  CHECK(config_error([&] { load_text(dir, "[training]\n  deterministic = 1\n", {}); }) ==
        path + ":2:19: training.deterministic must be true or false, got integer");
  CHECK(config_error([&] { load_text(dir, "[optimizer]\nlr = \"fast\"\n", {}); }) ==
        path + ":2:6: optimizer.lr must be a finite number, got string");
  CHECK(config_error([&] { load_text(dir, "[optimizer]\nlr = nan\n", {}); }) ==
        path + ":2:6: optimizer.lr must be a finite number, got floating-point");
  CHECK(config_error([&] { load_text(dir, "[model]\nname = [\"llama3\"]\n", {}); }) ==
        path + ":2:8: model.name must be a string, got array");
}

TEST_CASE("out of range in a file names the file and line", "[config]") {
  TempDir dir;
  const auto path = dir.job_file();
  CHECK(config_error([&] { load_text(dir, "[training]\nsteps = 0\n", {}); }) ==
        path + ":2:9: training.steps must be at least 1, got 0");
  CHECK(config_error([&] { load_text(dir, "[training]\nlocal_batch_size = 4\nglobal_batch_size = 6\n", {}); }) ==
        path + ":3:21: training.global_batch_size must be -1 or a positive multiple of training.local_batch_size, got 6");
}

TEST_CASE("out of range on the command line names the --key", "[config]") {
  TempDir dir;
  struct Case {
    std::string key, value, expected;
  };
  const std::vector<Case> cases = {
      {"training.steps", "0", "training.steps must be at least 1, got 0"},
      {"training.local_batch_size", "0", "training.local_batch_size must be at least 1, got 0"},
      {"training.seq_len", "1", "training.seq_len must be at least 2, got 1"},
      {"training.max_norm", "0", "training.max_norm must be greater than 0, got 0"},
      {"training.global_batch_size", "0", "training.global_batch_size must be -1 or a positive multiple"},
      {"training.global_batch_size", "12", "got 12"},
      {"optimizer.lr", "0", "optimizer.lr must be greater than 0, got 0"},
      {"optimizer.lr", "-1e-3", "optimizer.lr must be greater than 0, got -0.001"},
      {"optimizer.beta1", "1", "optimizer.beta1 must be in [0, 1), got 1"},
      {"optimizer.beta2", "-0.5", "optimizer.beta2 must be in [0, 1), got -0.5"},
      {"optimizer.eps", "0", "optimizer.eps must be greater than 0"},
      {"optimizer.weight_decay", "-0.1", "optimizer.weight_decay must be at least 0, got -0.1"},
      {"optimizer.name", "SGD", "optimizer.name must be one of AdamW | Adam, got 'SGD'"},
      {"lr_scheduler.warmup_steps", "-1", "lr_scheduler.warmup_steps must be at least 0, got -1"},
      {"lr_scheduler.decay_ratio", "1.5", "lr_scheduler.decay_ratio must be negative"},
      {"lr_scheduler.decay_type", "exp", "lr_scheduler.decay_type must be one of linear | cosine | sqrt, got 'exp'"},
      {"lr_scheduler.min_lr_factor", "2", "lr_scheduler.min_lr_factor must be in [0, 1], got 2"},
      {"metrics.log_freq", "0", "metrics.log_freq must be at least 1, got 0"},
      {"job.device", "tpu", "job.device must be one of auto | cpu | cuda, got 'tpu'"},
      {"job.dump_folder", "", "job.dump_folder must be a non-empty string"},
      {"activation_checkpoint.mode", "partial", "activation_checkpoint.mode must be one of none | full | selective"},
      {"activation_checkpoint.selective_ac_option", "0", "selective_ac_option must be \"op\" or a positive integer"},
      {"activation_checkpoint.selective_ac_option", "2x", "selective_ac_option must be \"op\" or a positive integer"},
  };
  for (const auto& c : cases) {
    INFO(c.key << " = " << c.value);
    CHECK_THAT(override_error(dir, c.key, c.value), StartsWith("--" + c.key + ": ") && Contains(c.expected));
  }
}

TEST_CASE("unsupported features are rejected with a reason", "[config]") {
  TempDir dir;
  CHECK_THAT(override_error(dir, "parallelism.enable_async_tensor_parallel", "maybe"), Contains("true or false"));
  CHECK_THAT(override_error(dir, "parallelism.tensor_parallel_degree", "0"), Contains("at least 1"));
  CHECK_THAT(override_error(dir, "parallelism.context_parallel_degree", "0"), Contains("at least 1"));
  CHECK_THAT(override_error(dir, "parallelism.context_parallel_rotate_method", "alltoall"),
             Contains("one of allgather | ring"));
  CHECK_THAT(override_error(dir, "training.attention_mask", "sliding"), Contains("one of causal | block_causal"));
}

TEST_CASE("parallelism keys: data-parallel degrees, reshard policy, local ranks, timeouts", "[config]") {
  TempDir dir;
  CHECK_THAT(override_error(dir, "parallelism.pipeline_parallel_schedule", "2F2B"), Contains("one of GPipe | 1F1B"));
  CHECK_THAT(override_error(dir, "parallelism.pipeline_parallel_microbatch_size", "0"), Contains("at least 1"));
  CHECK_THAT(override_error(dir, "parallelism.pipeline_parallel_split_points", "layers.4,layers.2"),
             Contains("increasing N"));
  CHECK_THAT(override_error(dir, "parallelism.pipeline_parallel_split_points", "blocks.4"),
             Contains("layers.N"));
  CHECK_THAT(override_error(dir, "parallelism.data_parallel_shard_degree", "0"), Contains("-1 or at least 1"));
  CHECK_THAT(override_error(dir, "parallelism.data_parallel_replicate_degree", "-1"), Contains("at least 1"));
  CHECK_THAT(override_error(dir, "parallelism.fsdp_reshard_after_forward", "sometimes"),
             Contains("default | always | never"));
  CHECK_THAT(override_error(dir, "job.local_ranks", "0"), Contains("-1 or at least 1"));
  CHECK_THAT(override_error(dir, "comm.train_timeout_seconds", "0"), Contains("at least 1"));
  CHECK_THAT(override_error(dir, "comm.trace_buf_size", "-1"), Contains("at least 0"));
  CHECK_THAT(override_error(dir, "comm.save_traces_folder", ""), Contains("comm.save_traces_folder"));
  const auto cfg = load_text(dir, "[parallelism]\ndata_parallel_replicate_degree = 2\nfsdp_reshard_after_forward = \"never\"\n"
                                  "[job]\nlocal_ranks = 4\n[comm]\ninit_timeout_seconds = 7\ntrace_buf_size = 0\n"
                                  "save_traces_file_prefix = \"r\"\n");
  CHECK(cfg.parallelism.data_parallel_replicate_degree == 2);
  CHECK(cfg.parallelism.fsdp_reshard_after_forward == "never");
  CHECK(cfg.job.local_ranks == 4);
  CHECK(cfg.comm.init_timeout_seconds == 7);
  CHECK(cfg.comm.train_timeout_seconds == 100);
  CHECK(cfg.comm.trace_buf_size == 0);
  CHECK(cfg.comm.save_traces_folder == "comm_traces");
  CHECK(cfg.comm.save_traces_file_prefix == "r");
}

TEST_CASE("checkpoint keys: torchtitan's names, lists from TOML or comma-separated, checked values", "[config]") {
  TempDir dir;
  const auto cfg = load_text(dir,
                             "[checkpoint]\nenable = true\nfolder = \"ckpt\"\ninterval = 3\nasync_mode = \"async\"\n"
                             "keep_latest_k = 2\nload_step = 6\nexport_dtype = \"bfloat16\"\n"
                             "exclude_from_loading = [\"optimizer\", \"dataloader\"]\n");
  CHECK(cfg.checkpoint.enable);
  CHECK(cfg.checkpoint.folder == "ckpt");
  CHECK(cfg.checkpoint.interval == 3);
  CHECK(cfg.checkpoint.async_mode == "async");
  CHECK(cfg.checkpoint.keep_latest_k == 2);
  CHECK(cfg.checkpoint.load_step == 6);
  CHECK(cfg.checkpoint.export_dtype == "bfloat16");
  CHECK(cfg.checkpoint.exclude_from_loading == std::vector<std::string>{"optimizer", "dataloader"});
  const auto over = load_text(dir, "[checkpoint]\nenable = true\n",
                              {{"checkpoint.exclude_from_loading", "lr_scheduler,rng"}});
  CHECK(over.checkpoint.exclude_from_loading == std::vector<std::string>{"lr_scheduler", "rng"});
  CHECK(override_error(dir, "checkpoint.async_mode", "sometimes") ==
        "--checkpoint.async_mode: checkpoint.async_mode must be one of disabled | async | async_with_pinned_mem, got "
        "'sometimes'");
  CHECK(override_error(dir, "checkpoint.interval", "0") == "--checkpoint.interval: checkpoint.interval must be at least 1, got 0");
  CHECK(override_error(dir, "checkpoint.export_dtype", "int8") ==
        "--checkpoint.export_dtype: checkpoint.export_dtype must be one of float32 | bfloat16 | float16, got 'int8'");
  CHECK_THAT(override_error(dir, "checkpoint.exclude_from_loading", "optimizer,weights"),
             Contains("must be a list of model | optimizer") && Contains("'weights'"));
  CHECK(override_error(dir, "checkpoint.load_step", "3") == "--checkpoint.load_step: checkpoint.load_step needs checkpoint.enable = true");
  CHECK(override_error(dir, "checkpoint.create_seed_checkpoint", "true") ==
        "--checkpoint.create_seed_checkpoint: checkpoint.create_seed_checkpoint needs checkpoint.enable = true");
  CHECK_THAT(config_error([&] {
               load_text(dir, "[checkpoint]\nenable = true\ninitial_load_path = \"/nonexistent/step-0\"\n");
             }),
             StartsWith(dir.job_file() + ":3:21: checkpoint.initial_load_path: directory '/nonexistent/step-0' not found"));
  CHECK(config_error([&] { load_text(dir, "[checkpoint]\nexclude_from_loading = \"optimizer\"\n"); }) ==
        dir.job_file() + ":2:24: checkpoint.exclude_from_loading must be a list of strings, got string");
}

TEST_CASE("key_values renders every key as TOML text that reads back to the same config", "[config]") {
  TempDir dir;
  auto cfg = load_text(dir, "[checkpoint]\nenable = true\nexclude_from_loading = [\"rng\"]\n[optimizer]\nlr = 3.0000000000000001e-4\n");
  std::map<std::string, std::string> sections;
  for (const auto& [key, value] : key_values(cfg)) {
    const auto dot = key.find('.');
    sections[key.substr(0, dot)] += key.substr(dot + 1) + " = " + value + "\n";
  }
  std::string toml;
  for (const auto& [section, body] : sections) toml += "[" + section + "]\n" + body;
  const auto back = load_text(dir, toml);
  CHECK(back.optimizer.lr == cfg.optimizer.lr);
  CHECK(back.checkpoint.exclude_from_loading == std::vector<std::string>{"rng"});
  CHECK(key_values(back) == key_values(cfg));
}

TEST_CASE("wrong type on the command line", "[config]") {
  TempDir dir;
  CHECK(override_error(dir, "training.steps", "abc") == "--training.steps: training.steps must be an integer, got 'abc'");
  CHECK(override_error(dir, "training.steps", "2.5") == "--training.steps: training.steps must be an integer, got '2.5'");
  CHECK(override_error(dir, "training.steps", "") == "--training.steps: training.steps must be an integer, got ''");
  CHECK(override_error(dir, "training.deterministic", "yes") ==
        "--training.deterministic: training.deterministic must be true or false, got 'yes'");
  CHECK(override_error(dir, "optimizer.lr", "inf") == "--optimizer.lr: optimizer.lr must be a finite number, got 'inf'");
}

TEST_CASE("unknown override key names the closest key", "[config]") {
  REQUIRE_THROWS_WITH(parse_override_args({"--training.step", "20"}),
                      "--training.step: unknown key 'training.step' (did you mean 'training.steps'?)");
  REQUIRE_THROWS_WITH(parse_override_args({"--optimizer.learning_rate=1"}),
                      StartsWith("--optimizer.learning_rate: unknown key") && Contains("did you mean 'optimizer."));
  // Overrides built in code get the same check.
  CHECK(config_error([] { load_job_config("", {{"training.step", "20"}}); }) ==
        "--training.step: unknown key 'training.step' (did you mean 'training.steps'?)");
}

TEST_CASE("bad override words", "[config]") {
  REQUIRE_THROWS_AS(parse_override_args({"steps", "20"}), ConfigError);
  CHECK_THAT(config_error([] { parse_override_args({"steps", "20"}); }),
             StartsWith("unexpected argument 'steps'") && Contains("--section.key value"));
  CHECK_THAT(config_error([] { parse_override_args({"--training.steps", "20", "30"}); }),
             StartsWith("unexpected argument '30'"));
  CHECK(config_error([] { parse_override_args({"--training.steps"}); }) ==
        "--training.steps: needs a value (--training.steps VALUE or --training.steps=VALUE)");
  CHECK_THAT(config_error([] { parse_override_args({"--training.steps", "--training.seq_len", "4"}); }),
             StartsWith("--training.steps: needs a value"));
}

TEST_CASE("missing config file", "[config]") {
  TempDir dir;
  const auto path = dir.file("absent.toml");
  REQUIRE_THROWS_AS(load_job_config(path), ConfigError);
  CHECK(config_error([&] { load_job_config(path); }) == "config file '" + path + "' not found");
}

TEST_CASE("TOML syntax error: file:line:column and toml++'s description", "[config]") {
  TempDir dir;
  const auto path = dir.write("broken.toml", "[training]\nsteps = = 3\n");
  const auto message = config_error([&] { load_job_config(path); });
  CHECK_THAT(message, StartsWith(path + ":2:"));
  // line:column: then a description
  const auto after_line = message.substr(path.size() + 3);
  const auto colon = after_line.find(": ");
  REQUIRE(colon != std::string::npos);
  CHECK(colon > 0);
  CHECK(std::all_of(after_line.begin(), after_line.begin() + colon, [](char c) { return std::isdigit(c); }));
  CHECK(after_line.size() > colon + 2);
}

TEST_CASE("the tokenizer file must exist", "[config]") {
  TempDir dir;
  const auto missing = dir.file("nope.json");
  CHECK(config_error([&] { load_job_config("", {{"model.tokenizer_path", missing}}); }) ==
        "--model.tokenizer_path: model.tokenizer_path: file '" + missing + "' not found");
  const auto path = dir.write("job.toml", "[model]\ntokenizer_path = \"" + missing + "\"\n");
  CHECK(config_error([&] { load_job_config(path); }) ==
        path + ":2:18: model.tokenizer_path: file '" + missing + "' not found");
}

TEST_CASE("[model] dimension keys: from the file and the command line, checked by the family, located", "[config]") {
  TempDir dir;
  const auto path = dir.job_file();
  const auto cfg = load_text(dir, "[model]\nname = \"qwen3\"\nflavor = \"8B\"\nn_layers = 3\ntie_embeddings = true\n",
                             {{"model.head_dim", "64"}, {"model.n_layers", "2"}});
  REQUIRE(cfg.model.dimensions.size() == 3);
  const auto model = troupe::train::job_model(cfg, 2048);
  const auto& d = dynamic_cast<const troupe::models::DecoderArchitecture&>(*model).args();
  CHECK(d.n_layers == 2);  // the command line over the file
  CHECK(d.head_dim == 64);
  CHECK(d.tie_embeddings);
  CHECK(d.vocab_size == 2048);  // the tokenizer's
  CHECK(d.dim == 4096);         // the flavor's
  // Recorded in the job's key values (checkpoint metadata).
  const auto kv = key_values(cfg);
  CHECK(std::find(kv.begin(), kv.end(), std::pair<std::string, std::string>{"model.n_layers", "2"}) != kv.end());
  // Checked by the family, pointing at where the key was set.
  auto model_error = [&](const std::string& toml, std::vector<Override> extra = {}) {
    const auto c = load_text(dir, toml, extra);
    return config_error([&] { troupe::train::job_model(c, 2048); });
  };
  CHECK(model_error("[model]\nname = \"qwen3\"\nmultiple_of = 256\n") ==
        path + ":3:15: model.multiple_of: not a dimension of qwen3 (its keys: dim, n_layers, n_heads, n_kv_heads, "
               "head_dim, ffn_hidden_dim, vocab_size, norm_eps, rope_theta, tie_embeddings)");
  CHECK_THAT(model_error("[model]\nn_layers = 2.5\n"), StartsWith(path + ":2:12: model.n_layers must be an integer"));
  CHECK(model_error("", {{"model.n_heads", "5"}}) == "--model.n_heads: model.n_heads (5) must divide dim (256) unless head_dim is set");
  CHECK(model_error("", {{"model.n_kv_heads", "5"}}) == "--model.n_kv_heads: model.n_kv_heads (5) must divide n_heads (16)");
  CHECK(model_error("", {{"model.name", "gpt2"}}) == "model.name: unknown model 'gpt2' (known: llama3, qwen3, qwen3_moe, deepseek_v3)");
  CHECK_THAT(model_error("", {{"model.flavor", "2B"}}),
             Contains("unknown llama3 flavor '2B'") && Contains("debugmodel, ") && Contains("405B"));
  CHECK_THAT(model_error("", {{"model.name", "qwen3"}, {"model.flavor", "3B"}}),
             Contains("unknown qwen3 flavor '3B'") && Contains("0.6B, 1.7B, 4B, 8B, 14B, 32B"));
  // A string is no dimension; a misspelt fixed key is still an unknown key.
  CHECK_THAT(config_error([&] { load_text(dir, "[model]\nn_layers = \"two\"\n"); }),
             Contains("model.n_layers must be a number or true or false, got string"));
  CHECK_THAT(config_error([&] { load_text(dir, "[model]\nflavour = \"8B\"\n"); }),
             Contains("unknown key 'model.flavour' (did you mean 'model.flavor'?)"));
  CHECK_THAT(config_error([&] { load_text(dir, "", {{"model.tokeniser_path", "x"}}); }),
             Contains("did you mean 'model.tokenizer_path'?"));
}

TEST_CASE("clearer messages: a key of another section, a directory as the config, warnings", "[config]") {
  TempDir dir;
  const auto path = dir.job_file();
  CHECK(config_error([&] { load_text(dir, "[training]\nlr = 3e-4\n"); }) ==
        path + ":2: unknown key 'training.lr' (did you mean 'optimizer.lr'?)");
  CHECK(config_error([&] { load_text(dir, "", {{"training.warmup_steps", "3"}}); }) ==
        "--training.warmup_steps: unknown key 'training.warmup_steps' (did you mean 'lr_scheduler.warmup_steps'?)");
  std::filesystem::create_directories(dir.file("configs"));
  CHECK(config_error([&] { load_job_config(dir.file("configs"), {}); }) ==
        "config file '" + dir.file("configs") + "' is a directory, not a TOML file");
  // Allowed, but said: a file with no keys, and a warmup longer than the run.
  const auto empty = dir.write("empty.toml", "# nothing here\n[training]\n");
  auto cfg = load_job_config(empty, {{"model.tokenizer_path", dir.tokenizer()}});
  auto warnings = config_warnings(empty, cfg);
  REQUIRE(warnings.size() == 1);  // the default warmup (200) is within the default steps (10000)
  CHECK(warnings[0] == empty + " sets no keys: every value is a default");
  cfg = load_text(dir, "[training]\nsteps = 20\n[lr_scheduler]\nwarmup_steps = 50\n");
  warnings = config_warnings(path, cfg);
  REQUIRE(warnings.size() == 1);
  CHECK(warnings[0] ==
        "lr_scheduler.warmup_steps (50) is more than training.steps (20): the learning rate never reaches optimizer.lr");
}
