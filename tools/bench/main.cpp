// troupe_bench: benchmarks that print tables (docs/perf/ records their results). Each
// subcommand takes a job config and `--section.key value` overrides, like `troupe train`.
#include <CLI/CLI.hpp>
#include <cstdio>

#include <functional>
#include <iostream>
#include <memory>

#include "cli/placement_options.h"
#include "runtime/crash_report.h"
#include "bench/benchmarks.h"

namespace {

struct Benchmark {
  CLI::App* command;
  std::function<int(const troupe::config::JobConfig&)> run;
};

CLI::App* add_benchmark(CLI::App& app, const std::string& name, const std::string& what, std::string& config_path) {
  auto* cmd = app.add_subcommand(name, what);
  cmd->add_option("--config", config_path, "job config")->capture_default_str();
  cmd->allow_extras();
  cmd->footer("Config keys can be overridden as in `troupe train` (e.g. --training.steps 20).");
  return cmd;
}

}  // namespace

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // lines reach a log even if the run is killed
  troupe::runtime::install_crash_report();
  using namespace troupe;
  CLI::App app{"troupe_bench: Troupe benchmarks"};
  app.require_subcommand(1);
  std::string config_path = "configs/llama3_debug.toml";
  int rounds = 3;
  int64_t warmup = 8;
  std::vector<Benchmark> benchmarks;

  auto* overhead = add_benchmark(app, "actor-overhead", "tokens/s through the actors vs a plain loop", config_path);
  overhead->add_option("--rounds", rounds, "alternating rounds of each path")->capture_default_str();
  benchmarks.push_back({overhead, [&](const config::JobConfig& cfg) { return bench::actor_overhead(cfg, rounds); }});

  double inspect_window = 5;
  auto* inspect = add_benchmark(app, "inspect-overhead",
                                "tokens/s with the inspection console attached vs not, in one run", config_path);
  inspect->add_option("--window", inspect_window, "seconds attached, then as many detached, and so on")
      ->capture_default_str();
  benchmarks.push_back(
      {inspect, [&](const config::JobConfig& cfg) { return bench::inspect_overhead(cfg, inspect_window); }});

  auto* speed = add_benchmark(app, "throughput", "tokens/s, MFU and peak memory of training (JSON + table)", config_path);
  speed->add_option("--warmup", warmup, "steps left out of the figures")->capture_default_str();
  // A job of several processes, as `troupe train` takes it (one process per GPU of a node too:
  // CUDA_VISIBLE_DEVICES picks each one's GPU).
  cli::PlacementFlags placement;
  cli::add_placement_options(*speed, placement);
  benchmarks.push_back({speed, [&](const config::JobConfig& cfg) {
                          auto placed = cfg;
                          const auto where = placement.resolve(placed);
                          return bench::throughput(placed, warmup, where);
                        }});

  int64_t profile_vocab = 128256, profile_warmup = 4, profile_steps = 3;
  std::string trace_path;
  int shard_alone_as = 0;
  auto* profile = add_benchmark(app, "step-profile", "plain-loop step time and the GPU kernels of a few steps",
                                config_path);
  profile->add_option("--vocab", profile_vocab, "vocabulary of the random tokens")->capture_default_str();
  profile->add_option("--warmup", profile_warmup, "steps before the timed ones")->capture_default_str();
  profile->add_option("--steps", profile_steps, "timed steps, then as many profiled")->capture_default_str();
  profile->add_option("--trace", trace_path, "write the Chrome trace here");
  profile->add_option("--rank-of,--fsdp-as", shard_alone_as,
                      "one rank as rank 0 of N: N=1 under FSDP over a real one-rank group (what FSDP itself costs); "
                      "N>1 replicas of it stand in for the other ranks of every group of the config's layout over a "
                      "world of N (one rank of an N-GPU job's memory and compute: FSDP, cp, tp)");
  int64_t document_tokens = 0;
  profile->add_option("--document-tokens", document_tokens,
                      "random documents of this many tokens on average (with --training.attention_mask block_causal)");
  std::string memory_history_path;
  profile->add_option("--memory-history", memory_history_path,
                      "after the timed steps, one step with the CUDA allocator's history (C++ stacks) written here as "
                      "its pickled snapshot: tools/bench/memory_peak.py says what is live at the peak");
  benchmarks.push_back({profile, [&](const config::JobConfig& cfg) {
                          return bench::step_profile(cfg, profile_vocab, profile_warmup, profile_steps, trace_path,
                                                     shard_alone_as, document_tokens, memory_history_path);
                        }});

  int64_t share_cp = 8, share_rounds = 5;
  auto* share = add_benchmark(app, "attention-share",
                              "one context-parallel rank's attention (forward + backward) against the whole sequence's, "
                              "per rank: the model's heads, training.seq_len and local_batch_size",
                              config_path);
  share->add_option("--cp", share_cp, "context-parallel degree")->capture_default_str();
  share->add_option("--document-tokens", document_tokens, "random documents of this many tokens on average; 0: causal");
  share->add_option("--rounds", share_rounds, "timed rounds (the best is kept)")->capture_default_str();
  benchmarks.push_back({share, [&](const config::JobConfig& cfg) {
                          return bench::attention_share(cfg, share_cp, document_tokens, share_rounds);
                        }});

  int64_t expert_ep = 8, expert_rounds = 5;
  auto* experts = add_benchmark(app, "expert-share",
                                "one expert-parallel rank's share of a MoE block's routed experts against the whole's "
                                "(forward + backward, balanced load): the model's experts, local_batch_size x seq_len "
                                "tokens per rank",
                                config_path);
  experts->add_option("--ep", expert_ep, "expert-parallel degree")->capture_default_str();
  experts->add_option("--rounds", expert_rounds, "timed rounds (the best is kept)")->capture_default_str();
  benchmarks.push_back(
      {experts, [&](const config::JobConfig& cfg) { return bench::expert_share(cfg, expert_ep, expert_rounds); }});

  int saves = 5;
  auto* blocking = add_benchmark(app, "checkpoint-blocking",
                                 "training time blocked per checkpoint: async snapshots vs a synchronous save", config_path);
  blocking->add_option("--rounds", saves, "checkpoints of each kind")->capture_default_str();
  benchmarks.push_back({blocking, [&](const config::JobConfig& cfg) { return bench::checkpoint_blocking(cfg, saves); }});

  std::string text_path = "data/kjv/kjv.txt";
  int speed_rounds = 3;
  auto* tok_speed = add_benchmark(app, "tokenizer-speed", "tokenizer MB/s, one thread and all cores, vs HF tokenizers",
                                  config_path);
  tok_speed->add_option("--text", text_path, "UTF-8 text; its blank-line separated paragraphs are the documents")
      ->capture_default_str();
  tok_speed->add_option("--rounds", speed_rounds, "best of this many passes")->capture_default_str();
  benchmarks.push_back(
      {tok_speed, [&](const config::JobConfig& cfg) { return bench::tokenizer_speed(cfg, text_path, speed_rounds); }});

  int64_t loader_batches = 200;
  double consumed_tps = 60000;
  auto* loader = add_benchmark(app, "loader-throughput", "tokens/s the data loader supplies vs what training consumes",
                               config_path);
  loader->add_option("--batches", loader_batches, "batches to cut")->capture_default_str();
  loader->add_option("--consumed", consumed_tps, "tokens/s training consumes")->capture_default_str();
  benchmarks.push_back({loader, [&](const config::JobConfig& cfg) {
                          return bench::loader_throughput(cfg, loader_batches, consumed_tps);
                        }});

  CLI11_PARSE(app, argc, argv);
  for (auto& b : benchmarks) {
    if (!b.command->parsed()) continue;
    try {
      return b.run(config::load_job_config(config_path, config::parse_override_args(b.command->remaining())));
    } catch (const std::exception& e) {
      std::cerr << "troupe_bench: " << e.what() << '\n';
      return 1;
    }
  }
  return 1;
}
