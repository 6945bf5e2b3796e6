// Checkpoints: exact resume, atomic commit under SIGKILL, integrity errors, keep_latest_k,
// resharding, seeds, and the Hugging Face round trip.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <csignal>
#include <filesystem>
#include <fstream>
#include <map>

#include "checkpoint/checkpoint_folder.h"
#include "checkpoint/file_io.h"
#include "checkpoint/module_state.h"
#include "checkpoint/shard_file.h"
#include "checkpoint/write_step.h"
#include "models/model.h"
#include "train/job_model.h"
#include "runtime/remove_tree.h"
#include "test_support.h"

using namespace troupe;
using Catch::Matchers::Contains;
namespace fs = std::filesystem;

namespace {

config::JobConfig checkpoint_config(const testing::TempDir& dir) {
  auto c = testing::small_job_config(dir);
  c.checkpoint.enable = true;
  c.checkpoint.interval = 3;
  c.checkpoint.last_save_model_only = true;
  return c;
}

std::string folder_of(const config::JobConfig& c) { return checkpoint::checkpoint_folder(c); }

// Every bit of what a step reports that depends on the training state.
void check_same_steps(const std::vector<train::StepStats>& got, const std::vector<train::StepStats>& want) {
  std::map<int64_t, train::StepStats> by_step;
  for (const auto& s : want) by_step[s.step] = s;
  REQUIRE_FALSE(got.empty());
  for (const auto& s : got) {
    INFO("step " << s.step);
    REQUIRE(by_step.contains(s.step));
    CHECK(s.loss == by_step[s.step].loss);
    CHECK(s.grad_norm == by_step[s.step].grad_norm);
    CHECK(s.lr == by_step[s.step].lr);
  }
}

// A snapshot of small named tensors as one rank of `ranks` holds them (dim-0 pieces).
checkpoint::HostSnapshot pieces_of(const checkpoint::TensorMap& whole, int rank, int ranks, int64_t step) {
  checkpoint::HostSnapshot snap;
  snap.meta.step = step;
  snap.meta.ranks.push_back({rank, "", 0, std::nullopt, {}});
  for (const auto& [name, t] : whole) {
    const auto shape = t.sizes().vec();
    const auto box = checkpoint::dim0_box(shape, rank, ranks);
    auto piece = shape.empty() ? t : t.narrow(0, box.offsets[0], box.lengths[0]);
    snap.tensors.push_back({name, piece.contiguous(), shape, box});
  }
  return snap;
}

checkpoint::TensorMap sample_tensors() {
  torch::manual_seed(1);
  return {{"a", torch::randn({10, 3})}, {"b", torch::arange(7, torch::kLong)}, {"c", torch::randn({5, 2, 2}).to(torch::kBFloat16)}};
}

// Writes `whole` as `ranks` shards of step `step` in `folder`, as the writer actors do.
std::string save_sharded(const std::string& folder, const checkpoint::TensorMap& whole, int ranks, int64_t step) {
  const auto tmp = checkpoint::new_tmp_dir(folder, step);
  fs::create_directories(tmp);
  std::vector<checkpoint::CheckpointMetadata> per_rank;
  for (int r = 0; r < ranks; ++r) per_rank.push_back(checkpoint::write_shard(pieces_of(whole, r, ranks, step), tmp));
  return checkpoint::commit_step(folder, tmp, checkpoint::merge_ranks(per_rank));
}

std::vector<checkpoint::WantedTensor> wanted_pieces(const checkpoint::TensorMap& whole, int rank, int ranks) {
  std::vector<checkpoint::WantedTensor> out;
  for (const auto& [name, t] : whole) out.push_back({name, t.sizes().vec(), checkpoint::dim0_box(t.sizes().vec(), rank, ranks)});
  return out;
}

void flip_byte(const std::string& path, uint64_t offset) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(static_cast<std::streamoff>(offset));
  char c = 0;
  f.read(&c, 1);
  c = static_cast<char>(c ^ 0x40);
  f.seekp(static_cast<std::streamoff>(offset));
  f.write(&c, 1);
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  FAIL("no exception");
  return {};
}

}  // namespace

TEST_CASE("a run resumed from its checkpoint continues bit for bit", "[checkpoint]") {
  testing::TempDir dir;
  auto c = checkpoint_config(dir);
  c.checkpoint.async_mode = "async_with_pinned_mem";
  const auto full = testing::run_with_timeout(c);
  REQUIRE(full.exit_code == 0);
  REQUIRE(full.steps.size() == 6);
  const auto folder = folder_of(c);
  CHECK(checkpoint::committed_steps(folder) == std::vector<int64_t>{3, 6});
  const auto meta3 = checkpoint::read_metadata(folder + "/step-3");
  CHECK_FALSE(meta3.model_only);
  REQUIRE(meta3.ranks.size() == 1);
  REQUIRE(meta3.ranks[0].dataloader);
  CHECK(meta3.ranks[0].dataloader->produced == 6);  // 3 steps x 2 micro-batches, though the loader was ahead
  CHECK(meta3.ranks[0].rng.contains("cpu"));
  CHECK(meta3.tensors.contains("optim.exp_avg.layers.0.attention.wq.weight"));
  CHECK(checkpoint::read_metadata(folder + "/step-6").model_only);  // last_save_model_only

  // As if the first run had died after step 3: the same command resumes and matches.
  runtime::remove_tree(folder + "/step-6");
  c.checkpoint.async_mode = "disabled";
  const auto resumed = testing::run_with_timeout(c);
  REQUIRE(resumed.exit_code == 0);
  REQUIRE(resumed.steps.size() == 3);
  CHECK(resumed.steps.front().step == 4);
  check_same_steps(resumed.steps, full.steps);

  // Excluding the data loader's position restarts the data: step 4 now sees other batches.
  runtime::remove_tree(folder + "/step-6");
  c.checkpoint.exclude_from_loading = {"dataloader"};
  const auto fresh_data = testing::run_with_timeout(c);
  REQUIRE(fresh_data.exit_code == 0);
  CHECK(fresh_data.steps.front().loss != full.steps[3].loss);

  // A corrupted shard stops the run before any step, naming the file and the tensor.
  const auto meta = checkpoint::read_metadata(folder + "/step-3");
  const auto& wq = meta.tensors.at("model.layers.1.attention.wq.weight").shards.at(0);
  flip_byte(folder + "/step-3/" + wq.file, wq.begin + 100);
  runtime::remove_tree(folder + "/step-6");
  c.checkpoint.exclude_from_loading = {};
  const auto broken = testing::run_with_timeout(c);
  CHECK(broken.exit_code == 1);
  CHECK_THAT(broken.message, Contains("rank0.safetensors") && Contains("'model.layers.1.attention.wq.weight'") &&
                                 Contains("checksum mismatch"));
}

TEST_CASE("keep_latest_k keeps the newest committed steps; the last step is model-only in export_dtype",
          "[checkpoint]") {
  testing::TempDir dir;
  auto c = checkpoint_config(dir);
  c.training.steps = 4;
  c.checkpoint.interval = 1;
  c.checkpoint.keep_latest_k = 2;
  c.checkpoint.async_mode = "async";
  c.checkpoint.export_dtype = "bfloat16";
  fs::create_directories(folder_of(c) + "/step-9.tmp-deadbeef");  // a crashed write of an earlier run
  const auto outcome = testing::run_with_timeout(c);
  REQUIRE(outcome.exit_code == 0);
  CHECK(checkpoint::committed_steps(folder_of(c)) == std::vector<int64_t>{3, 4});
  CHECK_FALSE(fs::exists(folder_of(c) + "/step-9.tmp-deadbeef"));
  const auto last = checkpoint::read_metadata(folder_of(c) + "/step-4");
  CHECK(last.model_only);
  for (const auto& [name, t] : last.tensors) {
    INFO(name);
    CHECK(name.starts_with("model."));
    CHECK(t.dtype == "BF16");
  }
  CHECK(checkpoint::read_metadata(folder_of(c) + "/step-3").tensors.at("model.norm.weight").dtype == "F32");
}

TEST_CASE("a seed checkpoint holds the initialised model and training starts from it", "[checkpoint]") {
  testing::TempDir dir;
  auto c = checkpoint_config(dir);
  c.training.steps = 2;
  c.checkpoint.create_seed_checkpoint = true;
  const auto seed = testing::run_with_timeout(c);
  REQUIRE(seed.exit_code == 0);
  CHECK(seed.steps.empty());
  CHECK_THAT(seed.message, Contains("seed checkpoint"));
  REQUIRE(checkpoint::committed_steps(folder_of(c)) == std::vector<int64_t>{0});
  CHECK(checkpoint::read_metadata(folder_of(c) + "/step-0").model_only);

  c.checkpoint.create_seed_checkpoint = false;
  const auto from_seed = testing::run_with_timeout(c);
  REQUIRE(from_seed.exit_code == 0);
  REQUIRE(from_seed.steps.size() == 2);
  auto plain = testing::small_job_config(dir);
  plain.training.steps = 2;
  plain.job.dump_folder = dir.file("plain");
  check_same_steps(from_seed.steps, testing::run_with_timeout(plain).steps);
}

TEST_CASE("resharding: N dim-0 shards load into M", "[checkpoint]") {
  testing::TempDir dir;
  const auto whole = sample_tensors();
  for (int saved : {1, 3}) {
    const auto step_dir = save_sharded(dir.file("ckpt"), whole, saved, saved);
    const auto meta = checkpoint::read_metadata(step_dir);
    CHECK(meta.ranks.size() == static_cast<size_t>(saved));
    CHECK(meta.tensors.at("a").shards.size() == static_cast<size_t>(saved));
    for (int loaded : {1, 2, 4}) {
      for (int r = 0; r < loaded; ++r) {
        INFO(saved << " -> " << loaded << " ranks, rank " << r);
        const auto got = checkpoint::read_tensors(step_dir, meta, wanted_pieces(whole, r, loaded));
        for (const auto& [name, t] : whole) {
          const auto box = checkpoint::dim0_box(t.sizes().vec(), r, loaded);
          CHECK(torch::equal(got.at(name), t.narrow(0, box.offsets[0], box.lengths[0])));
        }
      }
    }
  }
  // A shard missing from the metadata leaves part of a tensor uncovered: an error, not zeros.
  auto meta = checkpoint::read_metadata(dir.file("ckpt") + "/step-3");
  meta.tensors.at("a").shards.pop_back();
  CHECK_THAT(error_of([&] { checkpoint::read_whole_tensors(dir.file("ckpt") + "/step-3", meta); }),
             Contains("'a'") && Contains("cover"));
  CHECK(checkpoint::dim0_box({10, 3}, 3, 4) == checkpoint::ShardBox{{9, 0}, {1, 3}});
  CHECK(checkpoint::dim0_box({2}, 3, 4).numel() == 0);
}

TEST_CASE("bad checkpoints are clear errors naming the file and the tensor", "[checkpoint]") {
  testing::TempDir dir;
  const auto whole = sample_tensors();
  const auto folder = dir.file("ckpt");
  const auto step_dir = save_sharded(folder, whole, 1, 5);
  const auto shard = step_dir + "/rank0.safetensors";
  const auto meta = checkpoint::read_metadata(step_dir);
  const auto b = meta.tensors.at("b").shards.at(0);
  const auto pristine = checkpoint::read_file(shard);

  SECTION("corrupted") {
    flip_byte(shard, b.begin + 3);
    CHECK_THAT(error_of([&] { checkpoint::read_whole_tensors(step_dir, meta); }),
               Contains("rank0.safetensors") && Contains("'b'") && Contains("checksum mismatch"));
  }
  SECTION("truncated") {
    fs::resize_file(shard, b.begin + 8);
    CHECK_THAT(error_of([&] { checkpoint::read_whole_tensors(step_dir, meta); }),
               Contains("rank0.safetensors") && Contains("truncated") && Contains("tensor '"));
  }
  SECTION("missing file") {
    fs::remove(shard);
    CHECK_THAT(error_of([&] { checkpoint::read_whole_tensors(step_dir, meta); }),
               Contains("rank0.safetensors") && Contains("cannot open") && Contains("tensor '"));
  }
  SECTION("format version") {
    auto text = checkpoint::read_file(step_dir + "/metadata.json");
    text.replace(text.find("\"format_version\": 1"), 19, "\"format_version\": 2");
    checkpoint::write_file_durably(step_dir + "/metadata.json", text);
    CHECK_THAT(error_of([&] { checkpoint::read_metadata(step_dir); }),
               Contains("metadata.json") && Contains("format version 2") && Contains("reads version 1"));
  }
  SECTION("shape mismatch and missing tensor") {
    CHECK_THAT(error_of([&] { checkpoint::read_tensors(step_dir, meta, {{"a", {11, 3}, checkpoint::whole_box({11, 3})}}); }),
               Contains("metadata.json") && Contains("'a' has shape [10,3], the model needs [11,3]"));
    CHECK_THAT(error_of([&] { checkpoint::read_tensors(step_dir, meta, {{"z", {1}, checkpoint::whole_box({1})}}); }),
               Contains("no tensor 'z'"));
  }
  SECTION("nothing is read silently wrong: the intact file loads") {
    const auto got = checkpoint::read_whole_tensors(step_dir, meta);
    for (const auto& [name, t] : whole) CHECK(torch::equal(got.at(name), t));
  }
  CHECK(pristine.size() == meta.ranks.at(0).bytes);
}

TEST_CASE("a write that fails (full disk) is an error naming the path and leaves the folder intact", "[checkpoint]") {
  testing::TempDir dir;
  const auto folder = dir.file("ckpt");
  const auto whole = sample_tensors();
  save_sharded(folder, whole, 1, 1);
  // /dev/full answers every write with ENOSPC: a full disk without root or a mount.
  const auto tmp = checkpoint::new_tmp_dir(folder, 2);
  fs::create_directories(tmp);
  fs::create_symlink("/dev/full", tmp + "/rank0.safetensors");
  CHECK_THAT(error_of([&] { checkpoint::write_shard(pieces_of(whole, 0, 1, 2), tmp); }),
             Contains(tmp + "/rank0.safetensors") && Contains("No space left on device"));
  runtime::remove_tree(tmp);
  // A failing write_step removes its temporary directory; step-1 stays committed and whole.
  auto bad = pieces_of(whole, 0, 1, 2);
  bad.tensors.push_back({"complex", torch::zeros({2}, torch::kComplexFloat), {2}, checkpoint::whole_box({2})});
  CHECK_THAT(error_of([&] { checkpoint::write_step(folder, bad); }), Contains("'complex'"));
  CHECK(checkpoint::committed_steps(folder) == std::vector<int64_t>{1});
  CHECK(std::distance(fs::directory_iterator(folder), fs::directory_iterator()) == 1);
  const auto got = checkpoint::read_whole_tensors(folder + "/step-1", checkpoint::read_metadata(folder + "/step-1"));
  CHECK(torch::equal(got.at("a"), whole.at("a")));
}

TEST_CASE("only step-N directories are committed; a newer save of a step replaces it whole", "[checkpoint]") {
  testing::TempDir dir;
  const auto folder = dir.file("ckpt");
  const auto whole = sample_tensors();
  save_sharded(folder, whole, 1, 2);
  fs::create_directories(folder + "/step-7.tmp-0123456789abcdef");
  fs::create_directories(folder + "/step-x");
  CHECK(checkpoint::committed_steps(folder) == std::vector<int64_t>{2});
  CHECK(checkpoint::resolve_step_dir(folder) == folder + "/step-2");
  CHECK_THAT(error_of([&] { checkpoint::resolve_step_dir(folder, 7); }), Contains("no committed step 7"));
  auto changed = whole;
  changed["a"] = whole.at("a") + 1;
  save_sharded(folder, changed, 2, 2);
  CHECK(checkpoint::committed_steps(folder) == std::vector<int64_t>{2});
  const auto got = checkpoint::read_whole_tensors(folder + "/step-2", checkpoint::read_metadata(folder + "/step-2"));
  CHECK(torch::equal(got.at("a"), changed.at("a")));
  checkpoint::remove_uncommitted(folder);
  CHECK_FALSE(fs::exists(folder + "/step-7.tmp-0123456789abcdef"));
  CHECK(checkpoint::prune_committed(folder, 1).empty());
}

namespace {

// The command line of a small job for the troupe binary; `config` gets the same settings.
std::vector<std::string> train_args(const testing::TempDir& dir, config::JobConfig& config) {
  std::vector<std::string> overrides{"--model.tokenizer_path", testing::source_dir() + "/data/kjv/tokenizer.json",
                                     "--training.dataset=text", "--training.dataset_path", testing::corpus_slice(dir),
                                     "--training.steps", "5", "--training.seq_len", "32", "--training.local_batch_size",
                                     "2", "--training.global_batch_size", "4", "--metrics.log_freq", "1",
                                     "--job.dump_folder", dir.file("dump"), "--job.device", "cpu",
                                     "--checkpoint.enable", "--checkpoint.interval", "1", "--checkpoint.async_mode",
                                     "async", "--checkpoint.keep_latest_k", "0"};
  const auto toml = testing::source_dir() + "/configs/llama3_debug.toml";
  config = config::load_job_config(toml, config::parse_override_args(overrides));
  std::vector<std::string> argv{testing::troupe_binary(), "train", "--config", toml};
  argv.insert(argv.end(), overrides.begin(), overrides.end());
  return argv;
}

// The losses metrics.jsonl holds per step, the latest line winning (a resumed run appends).
std::map<int64_t, double> logged_losses(const std::string& path) {
  std::map<int64_t, double> out;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) {
    const auto j = nlohmann::json::parse(line);
    out[j["step"].get<int64_t>()] = j["loss"].get<double>();
  }
  return out;
}

bool has_uncommitted(const std::string& folder) {
  for (const auto& e : fs::directory_iterator(folder))
    if (e.path().filename().string().find(".tmp-") != std::string::npos) return true;
  return false;
}

}  // namespace

TEST_CASE("SIGKILL during a save: the restart resumes from the last committed step and matches", "[checkpoint-cli]") {
  testing::TempDir dir;
  config::JobConfig cfg;
  const auto argv = train_args(dir, cfg);
  const auto folder = folder_of(cfg);
  bool killed_mid_write = false;
  // Kill right after a snapshot went to the writer (its files are being written), at step 1, then
  // at the next steps (each run resumes from what is committed) until one kill has landed inside a
  // write and a step is committed to resume from: the writer takes tens of milliseconds, and a
  // loaded machine can let it finish first.
  for (int step = 1; step <= 4 && !(killed_mid_write && !checkpoint::committed_steps(folder).empty()); ++step) {
    testing::ChildProcess p(argv);
    std::string out;
    REQUIRE(p.wait_for_line("checkpoint: step " + std::to_string(step) + " copied", out));
    p.signal(SIGKILL);
    INFO(out);
    CHECK(p.wait(30, out) == 128 + SIGKILL);
    killed_mid_write = killed_mid_write || has_uncommitted(folder);
    for (auto step : checkpoint::committed_steps(folder)) {  // every committed step is whole
      const auto step_dir = folder + "/" + checkpoint::step_dir_name(step);
      CHECK_NOTHROW(checkpoint::read_whole_tensors(step_dir, checkpoint::read_metadata(step_dir)));
    }
  }
  CHECK(killed_mid_write);
  const auto before = checkpoint::committed_steps(folder);
  REQUIRE_FALSE(before.empty());
  testing::ChildProcess p(argv);
  std::string out;
  const int code = p.wait(120, out);
  INFO(out);
  REQUIRE(code == 0);
  CHECK_THAT(out, Contains("checkpoint: loaded " + folder + "/step-" + std::to_string(before.back())));
  CHECK_FALSE(has_uncommitted(folder));

  cfg.checkpoint.enable = false;
  cfg.job.dump_folder = dir.file("reference");
  const auto reference = testing::run_with_timeout(cfg);
  REQUIRE(reference.exit_code == 0);
  // The killed runs' buffered metrics died with them; the restart logged every step after the checkpoint.
  const auto logged = logged_losses(dir.file("dump") + "/metrics.jsonl");
  for (const auto& s : reference.steps) {
    if (s.step <= before.back()) continue;
    INFO("step " << s.step);
    REQUIRE(logged.contains(s.step));
    CHECK(logged.at(s.step) == s.loss);
  }
}

TEST_CASE("Hugging Face export loads in transformers with the same logits; import gives the same tensors",
          "[checkpoint-cli]") {
  // Llama 3, Qwen3 tied with its q/k norms, Qwen3 MoE (a dense first block, then experts, one HF
  // tensor each) and DeepSeek V3 with a multi-token prediction block (numbered after the last
  // layer, as DeepSeek's checkpoints do; transformers loads the rest): the export, transformers
  // and the import are the family's, through one path.
  const std::string family = GENERATE(as<std::string>{}, "llama3", "qwen3", "qwen3_moe", "deepseek_v3");
  INFO(family);
  testing::TempDir dir;
  auto c = checkpoint_config(dir);
  c.model.name = family;
  if (family == "qwen3") c.model.dimensions = {{"tie_embeddings", "true", "test"}, {"n_layers", "3", "test"}};
  if (family == "qwen3_moe") c.model.dimensions = {{"n_layers", "2", "test"}, {"n_dense_layers", "1", "test"}};
  if (family == "deepseek_v3")
    c.model.dimensions = {{"n_layers", "2", "test"}, {"n_dense_layers", "1", "test"}, {"sigmoid_scores", "true", "test"},
                          {"mtp_layers", "1", "test"}};  // and its default load_balance_coeff moves the expert biases
  c.training.steps = 2;
  c.checkpoint.interval = 2;
  REQUIRE(testing::run_with_timeout(c).exit_code == 0);
  const auto step_dir = folder_of(c) + "/step-2";
  const auto hf = dir.file("hf");
  {
    testing::ChildProcess p({testing::troupe_binary(), "checkpoint", "export", "--hf", hf, "--checkpoint", folder_of(c)});
    std::string out;
    INFO(out);
    REQUIRE(p.wait(120, out) == 0);
  }
  // Troupe's logits on a batch, from the checkpoint's weights.
  const auto meta = checkpoint::read_metadata(step_dir);
  const auto arch = train::checkpoint_model(meta.model);
  auto model = arch->build(at::TensorOptions().dtype(at::kFloat), meta.model.max_seq_len);
  checkpoint::TensorMap params;
  for (const auto& [name, t] : checkpoint::read_whole_tensors(step_dir, meta, "model.")) params[name.substr(6)] = t;
  checkpoint::load_parameters(*model, params);
  // The buffers too: DeepSeek V3's expert biases, which choose its experts in HF as here.
  checkpoint::TensorMap buffers;
  auto model_buffers = model->named_buffers();
  for (const auto& [name, t] : checkpoint::read_whole_tensors(step_dir, meta, "buffer.")) {
    buffers[name.substr(7)] = t;
    torch::NoGradGuard no_grad;
    model_buffers[name.substr(7)].copy_(t);
  }
  if (family == "deepseek_v3") CHECK(buffers.at("layers.1.moe.expert_bias").abs().max().item<float>() > 0);
  torch::manual_seed(3);
  const auto tokens = torch::randint(0, arch->vocab_size(), {2, 32}, torch::kLong);
  torch::NoGradGuard no_grad;
  checkpoint::write_safetensors(dir.file("batch.safetensors"), {{"tokens", tokens}, {"logits", model->logits(tokens)}});
  CHECK(testing::run_command("python3 " + testing::source_dir() + "/tests/oracle/hf_export_check.py " + hf + " " +
                             dir.file("batch.safetensors")) == 0);

  const std::vector<std::string> model_args{"--model.tokenizer_path", c.model.tokenizer_path, "--training.seq_len", "32",
                                            "--model.name", family};
  auto import_argv = std::vector<std::string>{testing::troupe_binary(), "checkpoint", "import", "--hf", hf,
                                              "--output", dir.file("imported"), "--config",
                                              testing::source_dir() + "/configs/llama3_debug.toml"};
  import_argv.insert(import_argv.end(), model_args.begin(), model_args.end());
  {
    testing::ChildProcess p(import_argv);
    std::string out;
    INFO(out);
    REQUIRE(p.wait(120, out) == 0);
  }
  const auto seed_dir = dir.file("imported") + "/step-0";
  const auto seed_meta = checkpoint::read_metadata(seed_dir);
  CHECK(seed_meta.model_only);
  const auto back = checkpoint::read_whole_tensors(seed_dir, seed_meta);
  REQUIRE(back.size() == params.size() + (family == "deepseek_v3" ? buffers.size() : 0));
  for (const auto& [name, t] : params) CHECK(torch::equal(back.at("model." + name), t));
  if (family == "deepseek_v3")
    for (const auto& [name, t] : buffers) CHECK(torch::equal(back.at("buffer." + name), t));

  {
    testing::ChildProcess p({testing::troupe_binary(), "checkpoint", "info", dir.file("imported"), "--verify"});
    std::string out;
    CHECK(p.wait(60, out) == 0);
    const auto& q = params.at("layers.0.attention.wq.weight");
    const auto wq = "[" + std::to_string(q.size(0)) + "," + std::to_string(q.size(1)) + "]";
    CHECK_THAT(out, Contains("model.layers.0.attention.wq.weight | F32 | " + std::string(wq) + " | 0 rank0.safetensors [0,0]+" +
                             wq) &&
                        Contains("verified"));
  }
  // The seed records its dimensions: a job with no flavor trains the imported model from it.
  auto sorted = [](models::Dimensions d) {
    std::sort(d.begin(), d.end());
    return d;
  };
  CHECK(sorted(seed_meta.model.dimensions) == sorted(train::checkpoint_model(meta.model)->dimensions()));
  {
    testing::ChildProcess p({testing::troupe_binary(), "train", "--config", testing::source_dir() + "/configs/llama3_debug.toml",
                             "--model.name", family, "--model.flavor=", "--model.tokenizer_path", c.model.tokenizer_path,
                             "--training.seq_len", "32", "--training.steps", "1", "--job.dump_folder", dir.file("from_seed"),
                             "--checkpoint.enable", "--checkpoint.initial_load_path", seed_dir, "--inspect.enable", "false"});
    std::string out;
    INFO(out);
    CHECK(p.wait(120, out) == 0);
    CHECK_THAT(out, Contains("checkpoint: loaded " + seed_dir));
  }
  // A config.json that disagrees with the weights beside it is refused, naming the tensor.
  auto config = nlohmann::json::parse(checkpoint::read_file(hf + "/config.json"));
  const int layers = config["num_hidden_layers"].get<int>() - 1;
  config["num_hidden_layers"] = layers;
  checkpoint::write_file_durably(hf + "/config.json", config.dump());
  import_argv[6] = dir.file("imported2");
  testing::ChildProcess p(import_argv);
  std::string out;
  CHECK(p.wait(60, out) == 1);
  CHECK_THAT(out, Contains("unexpected tensor 'model.layers." + std::to_string(layers) + ".") ||
                      Contains("unexpected tensor 'model.layers." + std::to_string(layers + 1) + "."));  // MTP's
  CHECK_FALSE(fs::exists(dir.file("imported2") + "/step-0"));
}

TEST_CASE("a checkpoint of another model is refused before anything runs; nothing already written is lost",
          "[checkpoint]") {
  testing::TempDir dir;
  auto c = checkpoint_config(dir);
  c.training.steps = 3;
  c.checkpoint.last_save_model_only = false;
  REQUIRE(testing::run_with_timeout(c).exit_code == 0);
  const auto folder = folder_of(c);
  REQUIRE(fs::exists(folder + "/step-3/metadata.json"));
  auto resumed = c;
  resumed.training.steps = 9;
  resumed.checkpoint.keep_latest_k = 1;
  auto refused = [&](const config::JobConfig& job) {
    return error_of([&] { testing::run_with_timeout(job); });
  };
  SECTION("other dimensions, another flavor, a tied head, another family") {
    auto deeper = resumed;
    deeper.model.dimensions = {{"n_layers", "4", "test"}};
    CHECK_THAT(refused(deeper), Contains(folder + "/step-3/metadata.json: another model than this job's: model.n_layers is 6 "
                                         "in the checkpoint, 4 in this job"));
    auto tied = resumed;
    tied.model.dimensions = {{"tie_embeddings", "true", "test"}};
    CHECK_THAT(refused(tied), Contains("model.tie_embeddings is false in the checkpoint, true in this job"));
    auto qwen = resumed;
    qwen.model.name = "qwen3";
    CHECK_THAT(refused(qwen), Contains("it holds a llama3 model, the job trains qwen3"));
  }
  SECTION("a checkpoint from before dimensions were recorded: checked by its tensors, and loaded when they fit") {
    auto text = checkpoint::read_file(folder + "/step-3/metadata.json");
    auto meta = nlohmann::json::parse(text);
    meta["model"].erase("dimensions");
    meta.erase("checksum");  // nor did they checksum metadata.json or the shards' headers
    for (auto& rank : meta["ranks"]) rank.erase("header");
    checkpoint::write_file_durably(folder + "/step-3/metadata.json", meta.dump(1));
    auto tied = resumed;
    tied.model.dimensions = {{"tie_embeddings", "true", "test"}};
    CHECK_THAT(refused(tied), Contains("its tensor 'model.output.weight' is not in this job's model"));
    auto wider = resumed;
    wider.model.dimensions = {{"dim", "128"}, {"n_heads", "8"}};
    for (auto& d : wider.model.dimensions) d.origin = "test";
    CHECK_THAT(refused(wider), Contains("tensor 'model.layers.0.attention.w") &&
                                   Contains(".weight' is [256,256] there, [128,128] in this job"));
    auto fits = resumed;
    fits.job.dump_folder = dir.file("fits");
    fits.checkpoint.initial_load_path = folder + "/step-3";
    fits.checkpoint.initial_load_model_only = false;
    const auto ok = testing::run_with_timeout(fits);
    CHECK(ok.exit_code == 0);
    REQUIRE_FALSE(ok.steps.empty());
    CHECK(ok.steps.front().step == 4);
  }
  SECTION("excluding the model loads the rest") {
    auto deeper = resumed;
    deeper.model.dimensions = {{"n_layers", "4", "test"}};
    deeper.checkpoint.exclude_from_loading = {"model"};
    deeper.job.dump_folder = dir.file("other");
    deeper.checkpoint.initial_load_path = folder + "/step-3";
    deeper.checkpoint.initial_load_model_only = false;
    CHECK(testing::run_with_timeout(deeper).exit_code == 0);
  }
  // Every refused run left the folder as it was.
  CHECK(checkpoint::committed_steps(folder) == std::vector<int64_t>{3});
}

TEST_CASE("checksums cover whole files: a shard's header and metadata.json; --verify checks every committed step",
          "[checkpoint-cli]") {
  testing::TempDir dir;
  auto c = checkpoint_config(dir);
  c.checkpoint.last_save_model_only = false;
  REQUIRE(testing::run_with_timeout(c).exit_code == 0);
  const auto folder = folder_of(c);
  REQUIRE(checkpoint::committed_steps(folder) == std::vector<int64_t>{3, 6});
  auto verify = [&](std::string& out) {
    testing::ChildProcess p({testing::troupe_binary(), "checkpoint", "info", folder, "--verify"});
    return p.wait(60, out);
  };
  std::string out;
  REQUIRE(verify(out) == 0);
  CHECK_THAT(out, Contains("verified " + folder + "/step-3") && Contains("verified " + folder + "/step-6"));
  const auto shard = folder + "/step-3/rank0.safetensors";
  const auto meta_path = folder + "/step-3/metadata.json";
  const auto pristine_meta = checkpoint::read_file(meta_path);
  SECTION("a flipped byte in the older step's safetensors header") {
    flip_byte(shard, 20);  // inside the header's JSON
    out.clear();
    CHECK(verify(out) == 1);
    CHECK_THAT(out, Contains(shard + ": header checksum mismatch"));
    // Resume from it fails the same way, before any step.
    auto resumed = c;
    resumed.checkpoint.load_step = 3;
    resumed.training.steps = 8;
    CHECK_THAT(error_of([&] {
                 const auto outcome = testing::run_with_timeout(resumed);
                 if (outcome.exit_code != 0) throw std::runtime_error(outcome.message);
               }),
               Contains("header checksum mismatch"));
  }
  SECTION("a changed value in metadata.json") {
    auto text = pristine_meta;
    const auto at = text.find("\"lr_scheduler\"");
    REQUIRE(at != std::string::npos);
    text.replace(text.find("\"step\": 3", at), 9, "\"step\": 2");
    checkpoint::write_file_durably(meta_path, text);
    out.clear();
    CHECK(verify(out) == 1);
    CHECK_THAT(out, Contains(meta_path) && Contains("checksum mismatch: the file was changed after it was written"));
  }
  // Nothing else was touched: the newest step still verifies alone.
  out.clear();
  testing::ChildProcess p({testing::troupe_binary(), "checkpoint", "info", folder + "/step-6", "--verify"});
  CHECK(p.wait(60, out) == 0);
}

TEST_CASE("a stop (SIGTERM before a preemption) saves the state after the running step; save_on_stop = false does not",
          "[checkpoint-cli]") {
  testing::TempDir dir;
  auto run = [&](const std::string& dump, std::vector<std::string> extra, bool signal, std::string& out) {
    std::vector<std::string> argv{testing::troupe_binary(), "train", "--config",
                                  testing::source_dir() + "/configs/llama3_debug.toml", "--model.tokenizer_path",
                                  testing::source_dir() + "/data/kjv/tokenizer.json", "--job.dump_folder", dir.file(dump),
                                  "--inspect.enable", "false", "--metrics.log_freq", "1", "--checkpoint.enable",
                                  "--checkpoint.interval", "1000", "--training.local_batch_size", "2",
                                  "--training.seq_len", "64"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    testing::ChildProcess p(argv);
    if (signal) {
      REQUIRE(p.wait_for_line("step:     2", out));
      p.signal(SIGTERM);
    }
    return p.wait(120, out);
  };
  std::string out;
  CHECK(run("saved", {"--training.steps", "10000"}, true, out) == 0);
  INFO(out);
  const auto folder = dir.file("saved") + "/checkpoint";
  const auto steps = checkpoint::committed_steps(folder);
  REQUIRE(steps.size() == 1);
  const auto step = steps.front();
  CHECK(step >= 2);
  CHECK_THAT(out, Contains("stopped by signal after step " + std::to_string(step)));
  CHECK_FALSE(checkpoint::read_metadata(folder + "/step-" + std::to_string(step)).model_only);  // the whole state
  // The same command resumes there, optimizer, schedule and data position included.
  std::string again;
  CHECK(run("saved", {"--training.steps", std::to_string(step + 1)}, false, again) == 0);
  CHECK_THAT(again, Contains("checkpoint: loaded " + folder + "/step-" + std::to_string(step) +
                             " (model, optimizer, lr_scheduler, dataloader, train_state, rng)"));
  // Asked not to: the stop saves nothing.
  out.clear();
  CHECK(run("unsaved", {"--training.steps", "10000", "--checkpoint.save_on_stop", "false"}, true, out) == 0);
  CHECK(checkpoint::committed_steps(dir.file("unsaved") + "/checkpoint").empty());
}

TEST_CASE("a finished run extended with more steps continues its whole state; a model-only final save says what restarts",
          "[checkpoint-cli]") {
  testing::TempDir dir;
  auto run = [&](const std::string& dump, int steps, std::vector<std::string> extra) {
    std::vector<std::string> argv{testing::troupe_binary(), "train", "--config",
                                  testing::source_dir() + "/configs/llama3_debug.toml", "--model.tokenizer_path",
                                  testing::source_dir() + "/data/kjv/tokenizer.json", "--job.dump_folder", dir.file(dump),
                                  "--inspect.enable", "false", "--checkpoint.enable", "--checkpoint.interval", "1000",
                                  "--metrics.log_freq", "1", "--training.local_batch_size", "2",
                                  "--training.seq_len", "64", "--training.steps", std::to_string(steps)};
    argv.insert(argv.end(), extra.begin(), extra.end());
    testing::ChildProcess p(argv);
    std::string out;
    CHECK(p.wait(120, out) == 0);
    return out;
  };
  // The final save keeps everything by default (the debug config says false; the key unset is the same).
  const auto first = run("kept", 3, {});
  INFO(first);
  CHECK_THAT(first, Contains("checkpoint: step 3 is the last; it keeps the whole training state"));
  const auto folder = dir.file("kept") + "/checkpoint";
  CHECK_FALSE(checkpoint::read_metadata(folder + "/step-3").model_only);
  const auto extended = run("kept", 5, {});
  INFO(extended);
  CHECK_THAT(extended, Contains("checkpoint: loaded " + folder + "/step-3 (model, optimizer, lr_scheduler, dataloader, "
                                "train_state, rng)"));
  CHECK_THAT(extended, Contains("step:     4"));
  CHECK_THAT(extended, !Contains("step:     1  loss"));

  // Asked for the model alone: extending says, in its load line, what starts over.
  run("alone", 3, {"--checkpoint.last_save_model_only", "true"});
  const auto alone = dir.file("alone") + "/checkpoint";
  CHECK(checkpoint::read_metadata(alone + "/step-3").model_only);
  const auto restarted = run("alone", 5, {"--checkpoint.last_save_model_only", "true"});
  INFO(restarted);
  CHECK_THAT(restarted, Contains("starting fresh: optimizer, lr_scheduler, dataloader, rng (warning: step-3 holds the "
                                 "model alone"));
}
