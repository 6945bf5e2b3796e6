// The job configuration: torchtitan's sections and key names, read from TOML and
// overridden from the command line. Holds plain values only so every file may include it.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace troupe::config {

struct JobSection {
  std::string dump_folder = "./outputs";
  std::string description = "";
  int64_t seed = 0;
  std::string device = "auto";  // auto | cpu | cuda
  // Ranks this process hosts: one per GPU on CUDA (-1: every visible GPU), any number on the
  // CPU (-1: one).
  int64_t local_ranks = -1;
};

// A [model] key other than the fixed ones: a dimension of the chosen family over its flavor
// (n_layers = 16, head_dim = 128, ...), checked by the family when the model is configured.
struct ModelDimension {
  std::string key;     // without "model."
  std::string value;   // as config text: 16, 1e-06, true
  std::string origin;  // "file:line:col" or "--model.key", for errors
};

struct ModelSection {
  std::string name = "llama3";
  // Empty: the dimensions recorded in the checkpoint the job loads (a seed from `checkpoint
  // import --hf`, or the job's own).
  std::string flavor = "debugmodel";
  std::string tokenizer_path = "data/kjv/tokenizer.json";
  // Applied over the built model, before parallelism: "quantize.linear.float8" (FP8 projections).
  std::vector<std::string> converters;
  std::vector<ModelDimension> dimensions;
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
  std::string dataset = "kjv";  // kjv | text | jsonl | tokens (shards of `troupe data prepare`)
  std::string dataset_path = "";  // a file, a directory (its files, recursively) or a glob
  std::string dataset_text_field = "text";  // jsonl: the key whose string is the document
  bool deterministic = false;
  // causal: a token attends to every earlier token of its row; block_causal: only to those of
  // its own document (documents end after the tokenizer's EOS token).
  std::string attention_mask = "causal";
  // Compute dtype on CUDA (fp32 master weights and optimizer state either way). CPU runs
  // compute in fp32: bf16 matmuls are slower there on CPUs without AMX.
  std::string mixed_precision_param = "bfloat16";  // bfloat16 | float32
  std::string mixed_precision_reduce = "float32";
};

// Every `freq` steps, the mean loss over `steps` batches of another dataset (read as
// training.dataset is, with training.local_batch_size and seq_len), and its perplexity.
struct ValidationSection {
  bool enable = false;
  std::string dataset = "kjv";
  std::string dataset_path = "";
  int64_t freq = 100;
  int64_t steps = 10;
};

struct MetricsSection {
  int64_t log_freq = 10;
  bool save_for_all_ranks = false;
  bool enable_tensorboard = false;  // also scalars in <job.dump_folder>/tb/ (TensorBoard event files)
};

// torchtitan's keys and defaults; checkpoints live in <job.dump_folder>/<folder>/step-N.
struct CheckpointSection {
  bool enable = false;
  std::string folder = "checkpoint";
  int64_t interval = 500;  // save every N steps (and after the last step)
  std::string async_mode = "disabled";  // disabled | async | async_with_pinned_mem
  int64_t keep_latest_k = 10;  // 0: keep every committed step
  int64_t load_step = -1;  // -1: resume from the newest committed step
  std::string initial_load_path = "";  // a checkpoint (folder or step-N) to start from when the folder has none
  bool initial_load_model_only = true;
  // The final step saves the model alone, in export_dtype. torchtitan's default is true; Troupe's
  // keeps the whole state, so that a run extended with more training.steps continues exactly.
  bool last_save_model_only = false;
  // A stop (SIGTERM before a preemption, SIGINT, the console) saves the full state after the
  // running step before the job ends.
  bool save_on_stop = true;
  std::string export_dtype = "float32";  // float32 | bfloat16 | float16
  // State parts not restored: model, optimizer, lr_scheduler, dataloader, train_state, rng.
  std::vector<std::string> exclude_from_loading;
  bool create_seed_checkpoint = false;  // write step-0 with the initialised model, then exit
};

// torchtitan's [parallelism]. The degrees multiply to the world size
// (data_parallel_shard_degree = -1 fills the rest).
struct ParallelismSection {
  int64_t data_parallel_replicate_degree = 1;
  int64_t data_parallel_shard_degree = -1;
  int64_t tensor_parallel_degree = 1;
  // Loss parallel (the loss on the vocabulary-sharded logits) is Troupe's one way under TP; true
  // is refused. Async TP (transfers overlapped with the GEMMs) is not built: true is refused.
  bool disable_loss_parallel = false;
  bool enable_async_tensor_parallel = false;
  int64_t pipeline_parallel_degree = 1;
  // Each sequence split over the cp ranks, load-balanced (rank i holds chunks i and 2cp-1-i);
  // attention over the group by `allgather` (keys and values gathered whole) or `ring`.
  int64_t context_parallel_degree = 1;
  std::string context_parallel_rotate_method = "allgather";
  // Routed experts split over this many of the dp_shard x cp x tp ranks (torchtitan's
  // expert_parallel_degree); the rest of those ranks shard each expert FSDP-style.
  int64_t expert_parallel_degree = 1;
  std::string fsdp_reshard_after_forward = "default";  // default | always | never
  // GPipe | 1F1B | Interleaved1F1B | ZBVZeroBubble | InterleavedZeroBubble
  std::string pipeline_parallel_schedule = "1F1B";
  int64_t pipeline_parallel_microbatch_size = 1;  // rows of the local batch per micro-batch
  // Stages: transformer blocks per stage (-1: pipeline degree x stages per rank, even split), or
  // where stages begin ("layers.4": stage boundary before block 4); not both.
  int64_t pipeline_parallel_layers_per_stage = -1;
  std::vector<std::string> pipeline_parallel_split_points;
};

// torchtitan's [profiling]: traces of what each rank did (pipeline actions, start and end), as
// Chrome trace files in <job.dump_folder>/<save_traces_folder>/.
struct ProfilingSection {
  bool enable_profiling = false;
  std::string save_traces_folder = "profile_traces";
};

// torchtitan's [comm]: how long ranks wait for each other before the job fails.
struct CommSection {
  int64_t init_timeout_seconds = 300;  // rendezvous and connecting the communicators
  int64_t train_timeout_seconds = 100;  // any one collective or transfer
  // The collectives each rank remembers (comm/flight_recorder.h; 0: none), written when the job
  // fails to <dump_folder>/<save_traces_folder>/<save_traces_file_prefix><rank>.json.
  int64_t trace_buf_size = 20000;
  std::string save_traces_folder = "comm_traces";
  std::string save_traces_file_prefix = "rank_";
};

// The inspection endpoint every process serves (`troupe inspect`, the web page, /metrics).
struct InspectSection {
  bool enable = true;
  std::string host = "127.0.0.1";  // beyond loopback needs a token
  int64_t port = 8470;             // node R: port + R; busy: another free port, named in the log
  std::string token = "";          // when set, every request must carry it
};

// torchtitan's [quantize.linear.float8], read when model.converters names it.
struct Float8Section {
  std::string recipe_name = "tensorwise";  // tensorwise | rowwise | rowwise_with_gw_hp | blockwise
  // Projections kept in bf16: a name part ("output", "attention.wq", "layers.0.") any projection
  // whose name contains it; "auto_filter_small_kn": those too small to gain (printed at start-up).
  std::vector<std::string> filter_fqns = {"output"};
  // FSDP gathers the FP8 weight with its scales (half the bytes of bf16), the scales computed for
  // every unit in one pass after the optimizer step.
  bool enable_fsdp_float8_all_gather = false;
  bool precompute_float8_dynamic_scale_for_fsdp = false;
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
  ValidationSection validation;
  MetricsSection metrics;
  CheckpointSection checkpoint;
  ParallelismSection parallelism;
  CommSection comm;
  InspectSection inspect;
  ActivationCheckpointSection activation_checkpoint;
  ProfilingSection profiling;
  Float8Section float8;  // [quantize.linear.float8]
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

// What is allowed but probably not meant, one line each: a config file that sets no key, a
// warmup longer than the run.
std::vector<std::string> config_warnings(const std::string& path, const JobConfig& cfg);

// Every valid key as "section.key", for error hints and --help.
std::vector<std::string> known_keys();

// Every key and its value as TOML text ("training.steps" -> "6"), in table order: what a
// checkpoint records of the job that wrote it.
std::vector<std::pair<std::string, std::string>> key_values(const JobConfig& cfg);

}  // namespace troupe::config
