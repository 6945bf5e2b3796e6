// Two GPUs of one node over NCCL: data parallelism and pipelines train as one GPU does (in fp32,
// so only the reduction order differs), and a checkpoint saved asynchronously by two GPUs resumes
// exactly on one GPU and on the CPU. Registered with -DTROUPE_GPU_TESTS=ON; needs two GPUs.
#include <torch/cuda.h>
#include <catch2/catch.hpp>

#include <cstdlib>

#include "checkpoint/checkpoint_folder.h"
#include "data/shard_preparer.h"
#include "parallel/pipeline_schedule.h"
#include "parallel_jobs.h"

using namespace troupe;
using namespace troupe::testing;

namespace {

config::JobConfig on_gpus(config::JobConfig c) {
  c.job.device = "cuda";
  c.training.mixed_precision_param = "float32";
  c.training.mixed_precision_reduce = "float32";
  return c;
}

// cuBLAS and NCCL sum in other orders than Gloo and one GPU do.
const Tolerance fp32_on_gpus{1e-4, 1e-3, 1e-3};

void require_two_gpus() { REQUIRE(torch::cuda::device_count() >= 2); }

}  // namespace

TEST_CASE("FSDP and DDP over 2 GPUs with NCCL train as one GPU does", "[gpu2]") {
  require_two_gpus();
  TempDir dir;
  const auto tokens = prepare_tokens(dir);
  const auto one_cfg = on_gpus(dp_job(dir, tokens, 1, 1, "one"));
  const auto one = run_with_timeout(one_cfg);
  INFO(one.message);
  REQUIRE(one.steps.size() == 20);
  CHECK(one.steps.back().loss < one.steps.front().loss - 0.5);
  const auto reference = final_model(one_cfg);
  for (const auto& [name, replicate, reshard] :
       {std::tuple{"fsdp2", 1, "default"}, std::tuple{"fsdp2-never", 1, "never"}, std::tuple{"ddp2", 2, "default"}}) {
    SECTION(name) {
      auto cfg = on_gpus(dp_job(dir, tokens, 2, replicate, name));
      cfg.parallelism.fsdp_reshard_after_forward = reshard;
      const auto two = run_with_timeout(cfg);
      INFO(two.message);
      check_same_run(two, one, 1, fp32_on_gpus);
      check_same_model(final_model(cfg), reference, fp32_on_gpus);
    }
  }
  SECTION("an output tied to the embedding") {
    auto tied = [&](int ranks, const std::string& name) {
      auto c = on_gpus(dp_job(dir, tokens, ranks, 1, name));
      c.model.dimensions = {{"tie_embeddings", "true", "test"}};
      c.training.steps = 10;
      return c;
    };
    const auto one_tied = tied(1, "tied1");
    const auto ref = run_with_timeout(one_tied);
    const auto two_tied = tied(2, "tied2");
    check_same_run(run_with_timeout(two_tied), ref, 1, fp32_on_gpus);
    check_same_model(final_model(two_tied), final_model(one_tied), fp32_on_gpus);
  }
  SECTION("bf16 compute with fp32 reduction tracks one GPU within bf16 rounding") {
    auto bf16 = [&](int ranks, const std::string& name) {
      auto c = dp_job(dir, tokens, ranks, 1, name);
      c.job.device = "cuda";
      return c;
    };
    const auto ref = run_with_timeout(bf16(1, "bf16one"));
    const auto two = run_with_timeout(bf16(2, "bf16two"));
    REQUIRE(two.steps.size() == ref.steps.size());
    for (size_t i = 0; i < ref.steps.size(); ++i) CHECK(two.steps[i].loss == Approx(ref.steps[i].loss).epsilon(3e-2));
  }
}

// The debug model's shapes hide what only large ones show (other cuBLAS kernels, other cuDNN
// plans, a 128k-token head in several chunks, 4096 tokens per rank): the 1.50B shapes cut to 2
// blocks, with Llama 3's vocabulary, FSDP over 2 GPUs in bf16 against one GPU for 4 steps.
// TROUPE_TEST_LLAMA3_TOKENIZER names the tokenizer.json (../shared/tokenizers/llama3_1.tokenizer.json;
// on the GPU machine, the copy carried in .device/).
TEST_CASE("FSDP of the 1.50B shapes (2 blocks, 128k vocabulary) over 2 GPUs tracks one GPU in bf16", "[gpu2]") {
  require_two_gpus();
  const char* tokenizer = std::getenv("TROUPE_TEST_LLAMA3_TOKENIZER");
  INFO("TROUPE_TEST_LLAMA3_TOKENIZER must name Llama 3's tokenizer.json");
  REQUIRE(tokenizer != nullptr);
  TempDir dir;
  data::PrepareOptions prep;
  prep.files = {corpus_slice(dir)};
  prep.tokenizer_path = tokenizer;
  prep.output_dir = dir.file("tokens");
  data::prepare_shards(prep, [](const data::PrepareProgress&) {}, nullptr);
  auto job = [&](int ranks, const std::string& name) {
    auto c = dp_job(dir, prep.output_dir, ranks, 1, name);
    c.job.device = "cuda";  // bf16 compute, fp32 masters and reduction (the defaults)
    c.model.tokenizer_path = tokenizer;
    c.model.flavor = "1.5B";
    c.model.dimensions = {{"n_layers", "2", "test"}};
    c.training.seq_len = 2048;  // 4 windows of 2049 tokens a step: 16 of the slice's ~20 in 4 steps
    c.training.steps = 4;
    c.checkpoint.enable = false;
    return c;
  };
  const auto one = run_with_timeout(job(1, "one"));
  INFO(one.message);
  REQUIRE(one.steps.size() == 4);
  const auto two = run_with_timeout(job(2, "two"));
  INFO(two.message);
  REQUIRE(two.steps.size() == one.steps.size());
  for (size_t i = 0; i < one.steps.size(); ++i) {
    INFO("step " << one.steps[i].step);
    CHECK(two.steps[i].loss == Approx(one.steps[i].loss).epsilon(3e-2));
    CHECK(two.steps[i].grad_norm == Approx(one.steps[i].grad_norm).epsilon(5e-2));
  }
}

TEST_CASE("a damaged token in one GPU rank's data ends the job with its error within the timeout", "[gpu2]") {
  require_two_gpus();
  check_damaged_token_ends_job("cuda");  // NCCL: the other rank's communicator must not hold the process
}

TEST_CASE("pipelines over 2 GPUs with NCCL train as one GPU does, with every schedule", "[gpu2]") {
  require_two_gpus();
  TempDir dir;
  const auto tokens = prepare_tokens(dir);
  const auto one_cfg = on_gpus(pp_job(dir, tokens, 1, 1, "1F1B", "one"));
  const auto one = run_with_timeout(one_cfg);
  INFO(one.message);
  REQUIRE(one.steps.size() == 10);
  const auto reference = final_model(one_cfg);
  for (const auto& schedule : parallel::pp::schedule_names()) {
    SECTION(schedule) {
      auto cfg = on_gpus(pp_job(dir, tokens, 2, 2, schedule, "pp2" + schedule));
      cfg.profiling.enable_profiling = true;
      const auto run = run_with_timeout(cfg);
      INFO(run.message);
      check_same_run(run, one, 1, fp32_on_gpus);
      check_same_model(final_model(cfg), reference, fp32_on_gpus);
      check_same_validation(cfg, one_cfg, fp32_on_gpus);
    }
  }
}

TEST_CASE("a checkpoint saved asynchronously by 2 GPUs resumes exactly on one GPU and on the CPU", "[gpu2]") {
  require_two_gpus();
  TempDir dir;
  const auto tokens = prepare_tokens(dir);
  for (const char* mode : {"async_with_pinned_mem", "async"}) {
    SECTION(mode) {
      auto full_cfg = on_gpus(dp_job(dir, tokens, 2, 1, "full"));
      full_cfg.checkpoint.async_mode = mode;
      const auto full = run_with_timeout(full_cfg);
      INFO(full.message);
      REQUIRE(full.exit_code == 0);
      for (const char* device : {"cuda", "cpu"}) {
        INFO("resumed on " << device);
        auto cfg = on_gpus(dp_job(dir, tokens, 1, 1, std::string("resumed-") + device));
        cfg.job.device = device;
        cfg.checkpoint.initial_load_path = checkpoint::checkpoint_folder(full_cfg) + "/step-10";
        cfg.checkpoint.initial_load_model_only = false;
        check_same_run(run_with_timeout(cfg), full, 11, fp32_on_gpus);
        check_same_model(final_model(cfg), final_model(full_cfg), fp32_on_gpus);
      }
    }
  }
}
