// Jobs that run one model under several parallel layouts, and the checks that they agree.
#include "parallel_jobs.h"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <chrono>
#include <fstream>

#include "checkpoint/checkpoint_folder.h"
#include "checkpoint/checkpoint_metadata.h"
#include "checkpoint/shard_file.h"
#include "comm/flight_record_report.h"
#include "data/shard_preparer.h"
#include "data/token_shards.h"

namespace troupe::testing {

// 20 steps of the debug model on pre-tokenized windows: every data-parallel layout sees the same
// global batch of 4 windows per step (rank r of d takes windows r, r+d, ...).
config::JobConfig dp_job(const TempDir& dir, const std::string& tokens, int ranks, int64_t replicate,
                         const std::string& name) {
  config::JobConfig c;
  c.job.device = "cpu";
  c.job.dump_folder = dir.file(name);
  c.job.local_ranks = ranks;
  c.model.tokenizer_path = source_dir() + "/data/kjv/tokenizer.json";
  c.training.dataset = "tokens";
  c.training.dataset_path = tokens;
  c.training.local_batch_size = 4 / ranks;
  c.training.seq_len = 32;
  c.training.steps = 20;
  c.training.deterministic = true;
  c.metrics.log_freq = 10;
  c.lr_scheduler.warmup_steps = 3;
  c.parallelism.data_parallel_replicate_degree = replicate;
  c.checkpoint.enable = true;
  c.checkpoint.interval = 10;
  c.checkpoint.last_save_model_only = true;  // step 20: the model alone, fp32
  return c;
}

std::string job_toml(const TempDir& dir, const std::string& tokens, int local_ranks, const std::string& dump, int steps,
                     int timeout_seconds, int inspect_port, const std::string& device) {
  return "[job]\ndevice = \"" + device + "\"\ndump_folder = \"" + dir.file(dump) + "\"\nlocal_ranks = " +
         std::to_string(local_ranks) + "\n[model]\ntokenizer_path = \"" + source_dir() +
         "/data/kjv/tokenizer.json\"\n[training]\ndataset = \"tokens\"\ndataset_path = \"" + tokens +
         "\"\nlocal_batch_size = 1\nseq_len = 32\nsteps = " + std::to_string(steps) +
         "\ndeterministic = true\n[lr_scheduler]\nwarmup_steps = 3\n[metrics]\nlog_freq = 1\n[comm]\n"
         "train_timeout_seconds = " + std::to_string(timeout_seconds) + "\n[inspect]\nport = " +
         std::to_string(inspect_port) + "\n";
}

void check_damaged_token_ends_job(const std::string& device) {
  TempDir dir;
  const auto tokens = prepare_tokens(dir);
  // Windows are 33 tokens (seq_len 32) and rank r of 2 takes windows r, r + 2, ...: window 5 is
  // rank 1's at step 3, read while the ranks are inside step 1 or 2's collectives.
  const int64_t position = 5 * 33 + 7;
  {
    std::fstream f(tokens + "/shard-00000.tokens", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(data::kShardHeaderBytes + 2 * position);
    const unsigned char past_vocab[2] = {0xff, 0xff};
    f.write(reinterpret_cast<const char*>(past_vocab), 2);
    REQUIRE(f.good());
  }
  const int timeout = 5;
  const auto config = dir.write("job.toml", job_toml(dir, tokens, 2, "damaged", 8, timeout, 0, device));
  ChildProcess job({troupe_binary(), "train", "--config", config});
  std::string out;
  const auto start = std::chrono::steady_clock::now();
  const int code = job.wait(90, out);
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  INFO(out);
  CHECK(code == 1);
  CHECK_THAT(out, Catch::Contains("shard-00000.tokens") &&
                      Catch::Contains("token 65535 at position " + std::to_string(position)) &&
                      Catch::Contains("outside its vocabulary"));
  CHECK(took < timeout + 25);  // the other rank's collective timeout at most, plus start and shutdown
  // Each rank's collectives (NCCL: ended by its watchdog), where the message says.
  const auto traces = dir.file("damaged/comm_traces");
  CHECK_THAT(out, Catch::Contains("[each rank's last collectives: " + traces + "]"));
  const auto report = comm::flight_record_report(traces);
  INFO(report);
  // Rank 1 issued its first gathers at least; rank 0 may still have been connecting.
  CHECK_THAT(report, Catch::Contains("2 ranks' records") && Catch::Contains("dp_shard[") &&
                         Catch::Contains("rank 0: ") && Catch::Contains("rank 1: issued up to #"));
}

std::string prepare_tokens(const TempDir& dir, const std::string& corpus) {
  data::PrepareOptions prep;
  prep.files = {corpus.empty() ? corpus_slice(dir) : corpus};
  prep.tokenizer_path = source_dir() + "/data/kjv/tokenizer.json";
  prep.output_dir = dir.file("tokens");
  data::prepare_shards(prep, [](const data::PrepareProgress&) {}, nullptr);
  return prep.output_dir;
}

std::string short_documents(const TempDir& dir) {
  std::ifstream in(source_dir() + "/data/kjv/kjv.txt");
  std::string line, text;
  for (int lines = 0; lines < 600 && std::getline(in, line); ++lines) {
    size_t start = 0;
    while (start < line.size()) {
      auto end = line.find_first_of(",;:", start);
      if (end == std::string::npos) end = line.size();
      if (end > start + 1) text += line.substr(start, end - start) + "\n\n";
      start = end + 1;
    }
  }
  const auto path = dir.file("short_documents.txt");
  std::ofstream(path) << text;
  return path;
}

checkpoint::TensorMap final_model(const config::JobConfig& c) {
  const auto step_dir = checkpoint::checkpoint_folder(c) + "/step-" + std::to_string(c.training.steps);
  return checkpoint::read_whole_tensors(step_dir, checkpoint::read_metadata(step_dir), "model.");
}

void check_same_run(const actors::TrainOutcome& got, const actors::TrainOutcome& want, int64_t first_step,
                    const Tolerance& tol) {
  REQUIRE(got.exit_code == 0);
  REQUIRE(want.exit_code == 0);
  size_t w = 0;
  while (w < want.steps.size() && want.steps[w].step < first_step) ++w;
  REQUIRE(got.steps.size() == want.steps.size() - w);
  for (size_t i = 0; i < got.steps.size(); ++i, ++w) {
    INFO("step " << got.steps[i].step);
    CHECK(got.steps[i].step == want.steps[w].step);
    CHECK(got.steps[i].loss == Approx(want.steps[w].loss).epsilon(tol.loss));
    CHECK(got.steps[i].grad_norm == Approx(want.steps[w].grad_norm).epsilon(tol.grad_norm));
    CHECK(got.steps[i].tokens == want.steps[w].tokens);
  }
}

void check_same_model(const checkpoint::TensorMap& got, const checkpoint::TensorMap& want, const Tolerance& tol) {
  REQUIRE(got.size() == want.size());
  for (const auto& [name, t] : want) {
    INFO(name);
    REQUIRE(got.count(name) == 1);
    CHECK(relative_error(got.at(name), t) < tol.params);
  }
}

// dp_job with a pipeline: `pp` stages over `ranks` ranks, the same 4 windows per step, each
// data-parallel rank's local batch cut into micro-batches of one row.
config::JobConfig pp_job(const TempDir& dir, const std::string& tokens, int ranks, int pp, const std::string& schedule,
                         const std::string& name) {
  auto c = dp_job(dir, tokens, ranks / pp, 1, name);
  c.job.local_ranks = ranks;
  c.model.dimensions = {{"n_layers", "8", "test"}};  // deep enough for 8 stages (4 ranks x 2 virtual)
  c.training.steps = 10;
  c.parallelism.pipeline_parallel_degree = pp;
  c.parallelism.pipeline_parallel_schedule = schedule;
  return with_validation(c, tokens);
}

config::JobConfig with_validation(config::JobConfig c, const std::string& tokens) {
  c.validation.enable = true;
  c.validation.dataset = "tokens";
  c.validation.dataset_path = tokens;
  c.validation.freq = 5;
  c.validation.steps = 2;
  return c;
}

// step -> validation loss, from the run's metrics.jsonl.
std::map<int64_t, double> validation_losses(const config::JobConfig& c) {
  std::map<int64_t, double> out;
  std::ifstream in(c.job.dump_folder + "/metrics.jsonl");
  std::string line;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line);
    if (j.contains("validation_loss")) out[j.at("step").get<int64_t>()] = j.at("validation_loss").get<double>();
  }
  return out;
}

void check_same_validation(const config::JobConfig& got, const config::JobConfig& want, const Tolerance& tol) {
  const auto g = validation_losses(got), w = validation_losses(want);
  REQUIRE(w.size() == 2);  // after steps 5 and 10
  REQUIRE(g.size() == w.size());
  for (const auto& [step, loss] : w) CHECK(g.at(step) == Approx(loss).epsilon(tol.loss));
}

}  // namespace troupe::testing
