// The job configuration: torchtitan's sections and key names, read from TOML and
// overridden from the command line. Holds plain values only so every file may include it.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace troupe::config {

struct JobSection {
  std::string dump_folder = "./outputs";
  std::string description = "";
  int64_t seed = 0;
  std::string device = "auto";  // auto | cpu | cuda
};

struct ModelSection {
  std::string name = "llama3";
  std::string flavor = "debugmodel";
  std::string tokenizer_path = "data/kjv/tokenizer.json";
};

struct OptimizerSection {
  std::string name = "AdamW";  // AdamW | Adam
  double lr = 8e-4;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;
};

struct LrSchedulerSection {
  int64_t warmup_steps = 200;
  double decay_ratio = -1.0;  // < 0: decay over every step after warmup (torchtitan's None)
  std::string decay_type = "linear";  // linear | cosine | sqrt
  double min_lr_factor = 0.0;
};

struct TrainingSection {
  int64_t local_batch_size = 8;
  int64_t global_batch_size = -1;  // -1: local_batch_size × data-parallel degree
  int64_t seq_len = 2048;
  double max_norm = 1.0;
  int64_t steps = 10000;
  std::string dataset = "kjv";
  std::string dataset_path = "";
  bool deterministic = false;
};

struct MetricsSection {
  int64_t log_freq = 10;
  bool save_for_all_ranks = false;
};

// Only what exists so far; the checkpoint issue adds the rest.
struct CheckpointSection {
  bool enable = false;
};

// One rank so far: every degree must be 1 (data_parallel_shard_degree may be -1: fill the rest).
struct ParallelismSection {
  int64_t data_parallel_replicate_degree = 1;
  int64_t data_parallel_shard_degree = -1;
  int64_t tensor_parallel_degree = 1;
  int64_t pipeline_parallel_degree = 1;
  int64_t context_parallel_degree = 1;
};

struct ActivationCheckpointSection {
  std::string mode = "none";  // none | full | selective
  std::string selective_ac_option = "2";  // selective: recompute every Nth transformer block
};

struct JobConfig {
  JobSection job;
  ModelSection model;
  OptimizerSection optimizer;
  LrSchedulerSection lr_scheduler;
  TrainingSection training;
  MetricsSection metrics;
  CheckpointSection checkpoint;
  ParallelismSection parallelism;
  ActivationCheckpointSection activation_checkpoint;
};

// One line that says what is wrong and where (file:line:column where there is one).
class ConfigError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A `--section.key value` or `--section.key=value` from the command line.
struct Override {
  std::string key;    // "training.steps"
  std::string value;  // the text as given; parsed by the key's type
};

// Splits command-line words into overrides; throws ConfigError on a word that is not one.
std::vector<Override> parse_override_args(const std::vector<std::string>& args);

// Reads `path` (empty: defaults only), applies the overrides in order, validates everything.
JobConfig load_job_config(const std::string& path, const std::vector<Override>& overrides = {});

// Every valid key as "section.key", for error hints and --help.
std::vector<std::string> known_keys();

}  // namespace troupe::config
