// Optimizer step, schedule, accumulation, clipping, determinism and the data order.
#include <catch2/catch.hpp>
#include <torch/torch.h>
#include <sys/wait.h>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <thread>


#include "data/batch_source.h"
#include "data/tokenizer.h"
#include "models/model.h"
#include "runtime/crash_report.h"
#include "runtime/error_text.h"
#include "runtime/teardown_deadline.h"
#include "test_support.h"
#include "train/adamw.h"
#include "train/lr_schedule.h"
#include "train/job_model.h"
#include "train/trainer.h"

using namespace troupe;

namespace {

config::JobConfig small_config() {
  config::JobConfig c;
  c.job.device = "cpu";
  c.job.seed = 1234;
  c.model.tokenizer_path = testing::source_dir() + "/data/kjv/tokenizer.json";
  c.training.dataset_path = testing::source_dir() + "/data/kjv/kjv.txt";
  c.training.local_batch_size = 2;
  c.training.seq_len = 32;
  c.training.steps = 10;
  c.optimizer.lr = 1e-3;
  c.lr_scheduler.warmup_steps = 2;
  return c;
}

models::ArchitecturePtr model_of(const config::JobConfig& c) { return train::job_model(c); }

std::vector<std::shared_ptr<const data::Batch>> next_micro_batches(data::BatchSource& src, int64_t n) {
  std::vector<std::shared_ptr<const data::Batch>> out;
  for (int64_t i = 0; i < n; ++i) out.push_back(std::make_shared<const data::Batch>(src.next()));
  return out;
}

std::vector<double> train_losses(const config::JobConfig& c, int64_t steps) {
  data::BatchSource src(c);
  train::Trainer trainer(c, model_of(c));
  std::vector<double> losses;
  for (int64_t s = 1; s <= steps; ++s)
    losses.push_back(trainer.step(s, next_micro_batches(src, trainer.micro_batches_per_step())).loss);
  return losses;
}

}  // namespace

TEST_CASE("lr schedule: warmup, stable, then decay to min_lr_factor", "[train]") {
  // 10 steps, warmup 2, decay over the last 5 (ratio 0.5), floor 10% of the base.
  train::LrSchedule linear(1.0, 10, 2, 0.5, "linear", 0.1);
  CHECK(linear.lr(1) == Approx(1.0 / 3));
  CHECK(linear.lr(2) == Approx(2.0 / 3));
  CHECK(linear.lr(3) == Approx(1.0));
  CHECK(linear.lr(5) == Approx(1.0));
  CHECK(linear.lr(6) == Approx(0.1 + 0.9 * (1 - 1.0 / 5)));
  CHECK(linear.lr(10) == Approx(0.1));
  train::LrSchedule cosine(2.0, 10, 0, std::nullopt, "cosine", 0.0);
  CHECK(cosine.lr(5) == Approx(2.0 * 0.5 * (1 + std::cos(M_PI * 0.5))));
  train::LrSchedule sqrt_decay(2.0, 10, 0, std::nullopt, "sqrt", 0.0);
  CHECK(sqrt_decay.lr(4) == Approx(2.0 * (1 - std::sqrt(0.4))));
  REQUIRE_THROWS_WITH(train::LrSchedule(1.0, 10, 0, std::nullopt, "step", 0.0), Catch::Contains("decay_type"));
}

TEST_CASE("same config and seed give the same losses bit for bit; another seed does not", "[train]") {
  auto c = small_config();
  const auto a = train_losses(c, 3), b = train_losses(c, 3);
  CHECK(a == b);
  c.job.seed = 99;
  CHECK(train_losses(c, 3) != a);
}

TEST_CASE("every activation checkpointing policy trains the same losses as none", "[train]") {
  auto c = small_config();
  const auto none = train_losses(c, 4);
  for (const auto& [mode, option] : std::vector<std::pair<std::string, std::string>>{
           {"full", "2"}, {"selective", "2"}, {"selective", "op"}}) {
    INFO(mode << " " << option);
    c.activation_checkpoint.mode = mode;
    c.activation_checkpoint.selective_ac_option = option;
    const auto losses = train_losses(c, 4);
    REQUIRE(losses.size() == none.size());
    for (size_t i = 0; i < none.size(); ++i) CHECK(losses[i] == Approx(none[i]).epsilon(1e-6));
  }
}

TEST_CASE("gradient accumulation equals one step on the concatenated batch", "[train]") {
  auto whole = small_config();
  whole.training.local_batch_size = 4;
  auto accumulated = small_config();
  accumulated.training.local_batch_size = 2;
  accumulated.training.global_batch_size = 4;
  train::Trainer one(whole, model_of(whole)), two(accumulated, model_of(accumulated));
  REQUIRE(two.micro_batches_per_step() == 2);
  data::BatchSource src(accumulated);
  auto halves = next_micro_batches(src, 2);
  auto joined = std::make_shared<data::Batch>();
  joined->tokens = torch::cat({halves[0]->tokens, halves[1]->tokens});
  joined->targets = torch::cat({halves[0]->targets, halves[1]->targets});
  const auto s1 = one.step(1, {joined});
  const auto s2 = two.step(1, halves);
  CHECK(s2.loss == Approx(s1.loss).epsilon(1e-6));
  CHECK(s2.grad_norm == Approx(s1.grad_norm).epsilon(1e-5));
  CHECK(s2.tokens == s1.tokens);
  auto p1 = one.model().parameters(), p2 = two.model().parameters();
  for (size_t i = 0; i < p1.size(); ++i) CHECK(testing::relative_error(p2[i], p1[i]) < 1e-5);
}

TEST_CASE("AdamW applies decoupled weight decay to the gradient clipped to max_norm", "[train]") {
  auto c = small_config();
  c.optimizer.weight_decay = 0.1;
  c.optimizer.eps = 1e-5;  // near the clipped gradients' size, so the update depends on their scale
  c.training.max_norm = 1e-2;
  // The same first step unclipped gives the raw gradient g (its divisor is 1).
  auto unclipped_cfg = c;
  unclipped_cfg.training.max_norm = 1e30;
  train::Trainer unclipped(unclipped_cfg, model_of(c));
  train::Trainer trainer(c, model_of(c));
  data::BatchSource src(c), same(c);
  unclipped.step(1, next_micro_batches(same, 1));
  std::vector<at::Tensor> before, g;
  for (auto& p : trainer.model().parameters()) before.push_back(p.detach().clone().to(torch::kDouble));
  double norm_sq = 0;
  for (auto& p : unclipped.model().parameters()) {
    g.push_back(p.grad().to(torch::kDouble));
    norm_sq += g.back().pow(2).sum().item<double>();
  }
  const auto stats = trainer.step(1, next_micro_batches(src, 1));
  const double lr = stats.lr, norm = std::sqrt(norm_sq);
  // The reported norm is the gradient's before clipping.
  CHECK(stats.grad_norm == Approx(norm).epsilon(1e-5));
  REQUIRE(norm > 10 * c.training.max_norm);
  // First Adam step: m̂ = ĝ, v̂ = ĝ², so p1 = p0·(1 − lr·wd) − lr·ĝ/(|ĝ| + eps), ĝ = g·max_norm/norm.
  auto params = trainer.model().parameters();
  double worst = 0, worst_unclipped = 0;
  for (size_t i = 0; i < params.size(); ++i) {
    auto step_with = [&](const at::Tensor& grad) {
      return before[i] * (1 - lr * c.optimizer.weight_decay) - lr * grad / (grad.abs() + c.optimizer.eps);
    };
    const auto clipped = g[i] * (c.training.max_norm / (norm + 1e-6));
    worst = std::max(worst, testing::relative_error(params[i], step_with(clipped)));
    worst_unclipped = std::max(worst_unclipped, testing::relative_error(params[i], step_with(g[i])));
  }
  INFO("worst relative error " << worst << "; against the unclipped update " << worst_unclipped);
  CHECK(worst < 1e-5);
  CHECK(worst_unclipped > 100 * worst);  // the clipping mattered
}

TEST_CASE("AdamW in pieces updates like one launch and reports each piece once it is done", "[train]") {
  torch::manual_seed(4);
  auto make = [] {
    std::vector<std::pair<std::string, at::Tensor>> named;
    for (int i = 0; i < 5; ++i) {
      auto p = torch::randn({3 + i}, torch::kDouble);
      p.mutable_grad() = torch::randn({3 + i}, torch::kDouble);
      named.emplace_back("p" + std::to_string(i), p);
    }
    return named;
  };
  auto whole = make();
  std::vector<std::pair<std::string, at::Tensor>> pieces;
  for (auto& [name, p] : whole) {
    auto q = p.clone();
    q.mutable_grad() = p.grad().clone();
    pieces.emplace_back(name, q);
  }
  train::AdamW one(whole, {}), split(pieces, {});
  for (int step = 0; step < 2; ++step) {
    one.step(1e-2);
    std::vector<std::string> seen;
    split.step(1e-2, {}, {1, 3}, [&](size_t k) {
      // Piece k's parameters are updated when it is reported; the later ones not yet.
      const size_t end = k == 0 ? 1 : 3;
      for (size_t i = 0; i < pieces.size(); ++i)
        CHECK(torch::equal(pieces[i].second, whole[i].second) == (i < end));
      seen.push_back(std::to_string(k));
    });
    CHECK(seen == std::vector<std::string>{"0", "1"});
    for (size_t i = 0; i < pieces.size(); ++i) CHECK(torch::equal(pieces[i].second, whole[i].second));
  }
  CHECK(split.steps_taken() == 2);
}

TEST_CASE("libtorch's errors reach the user without their C++ backtrace", "[train]") {
  try {
    (void)torch::ones({2, 3}).view({4});
    FAIL("a view of 6 elements as 4 must throw");
  } catch (const std::exception& e) {
    const auto text = runtime::error_text(e);
    CHECK_THAT(std::string(e.what()), Catch::Contains("Exception raised from"));
    CHECK_THAT(text, Catch::Contains("shape '[4]' is invalid for input of size 6"));
    CHECK_THAT(text, !Catch::Contains("Exception raised from"));
  }
  const std::runtime_error plain("a plain error");
  CHECK(runtime::error_text(plain) == "a plain error");
}

// Not static and not inlined: the report must name it (the binary exports its symbols).
__attribute__((noinline)) void troupe_test_crashes_here(volatile int* where) { *where = 1; }

TEST_CASE("a crash prints the signal, the thread and a stack naming the function, then dies of the signal",
          "[training]") {
  const auto child = testing::run_in_child([] {
    runtime::install_crash_report();  // replaces the handlers Catch installed in this process
    troupe_test_crashes_here(nullptr);
  });
  INFO(child.stderr_text);
  REQUIRE(WIFSIGNALED(child.wait_status));
  CHECK(WTERMSIG(child.wait_status) == SIGSEGV);
  CHECK_THAT(child.stderr_text, Catch::Contains("troupe: fatal signal SIGSEGV at address 0x0 in thread") &&
                                    Catch::Contains("troupe_test_crashes_here"));
}

// Not static and not inlined, as above: the stack dump must name it.
__attribute__((noinline)) void troupe_test_waits_here(const std::atomic<bool>& stop) {
  while (!stop.load()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
}

TEST_CASE("SIGQUIT prints every thread's stack, each named, and the process goes on", "[training]") {
  const auto child = testing::run_in_child([] {
    runtime::install_crash_report();
    std::atomic<bool> stop{false};
    std::thread waiter([&] {
      pthread_setname_np(pthread_self(), "troupe-waiter");
      troupe_test_waits_here(stop);
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    raise(SIGQUIT);
    std::fputs("still running after SIGQUIT\n", stderr);
    // Communicators timing out together print the stacks once.
    runtime::dump_thread_stacks("first timeout", /*once=*/true);
    runtime::dump_thread_stacks("second timeout", /*once=*/true);
    stop = true;
    waiter.join();
  });
  INFO(child.stderr_text);
  REQUIRE(WIFEXITED(child.wait_status));
  CHECK(WEXITSTATUS(child.wait_status) == 0);
  const auto& text = child.stderr_text;
  CHECK_THAT(text, Catch::Contains("troupe: SIGQUIT: the stack of every thread follows") &&
                       Catch::Contains("(troupe-waiter):") && Catch::Contains("troupe_test_waits_here") &&
                       Catch::Contains("troupe: end of the stacks") && Catch::Contains("still running after SIGQUIT") &&
                       Catch::Contains("troupe: first timeout:") && !Catch::Contains("second timeout"));
  CHECK_THAT(text, !Catch::Contains("did not answer"));
  // Both dumps name both threads: the waiter and the one that asked.
  size_t headers = 0;
  for (size_t at = text.find("\nthread "); at != std::string::npos; at = text.find("\nthread ", at + 1)) ++headers;
  CHECK(headers == 4);
}

TEST_CASE("a teardown past its deadline leaves the process with the job's exit code; one in time does not",
          "[training]") {
  const auto start = std::chrono::steady_clock::now();
  const auto stuck = testing::run_in_child([] {
    runtime::install_crash_report();
    runtime::TeardownDeadline teardown;
    teardown.arm(std::chrono::milliseconds(200), 3, "stuck in teardown");
    std::this_thread::sleep_for(std::chrono::seconds(20));  // an actor that never stops
  });
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  INFO(stuck.stderr_text);
  REQUIRE(WIFEXITED(stuck.wait_status));
  CHECK(WEXITSTATUS(stuck.wait_status) == 3);
  CHECK(took < 10);
  CHECK_THAT(stuck.stderr_text, Catch::Contains("troupe: stuck in teardown"));
  // Then where each thread was: the deadline's watcher and the thread that never stopped.
  CHECK_THAT(stuck.stderr_text, Catch::Contains("ran out of time: the stack of every thread follows") &&
                                    Catch::Contains("troupe: end of the stacks"));
  CHECK_THAT(stuck.stderr_text, !Catch::Contains("did not answer"));

  const auto in_time = testing::run_in_child([] {
    runtime::TeardownDeadline teardown;
    teardown.arm(std::chrono::seconds(5), 3, "stuck in teardown");
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  });
  REQUIRE(WIFEXITED(in_time.wait_status));
  CHECK(WEXITSTATUS(in_time.wait_status) == 0);
  CHECK(in_time.stderr_text.empty());
}

TEST_CASE("batches: targets are the tokens shifted by one, in the same order for the same seed", "[data]") {
  auto c = small_config();
  data::BatchSource x(c), y(c);
  for (int i = 0; i < 3; ++i) {
    auto bx = x.next(), by = y.next();
    CHECK(torch::equal(bx.tokens, by.tokens));
    CHECK(torch::equal(bx.tokens.narrow(1, 1, c.training.seq_len - 1), bx.targets.narrow(1, 0, c.training.seq_len - 1)));
    CHECK(bx.tokens.sizes() == std::vector<int64_t>{c.training.local_batch_size, c.training.seq_len});
  }
}

TEST_CASE("50 steps of the debug model lower the loss on the bundled data", "[train][slow]") {
  auto c = small_config();
  c.training.local_batch_size = 4;
  c.training.seq_len = 128;
  c.training.steps = 50;
  c.lr_scheduler.warmup_steps = 5;
  const auto losses = train_losses(c, 50);
  const double start = (losses[0] + losses[1] + losses[2]) / 3;
  const double end = (losses[45] + losses[46] + losses[47] + losses[48] + losses[49]) / 5;
  INFO("start " << start << " end " << end);
  CHECK(start > 7.0);  // ≈ ln(2048) = 7.6 from a random start
  CHECK(end < start - 2.0);
}
