// The actor runtime: a run through the actors, status answers, shutdown, signals, failures.
#include <catch2/catch.hpp>
#include <caf/all.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <csignal>
#include <fstream>
#include <future>
#include <set>
#include <thread>

#include <unistd.h>

#include "actors/data_loader.h"
#include "actors/data_loader_protocol.h"
#include "actors/node_supervisor_protocol.h"
#include "comm/flight_record_report.h"
#include "runtime/exit_codes.h"
#include "runtime/failpoint.h"
#include "actors/status_board.h"
#include "runtime/thread_exit.h"
#include "data/batch_source.h"
#include "data/tokenizer.h"
#include "cli/run_training.h"
#include "test_support.h"
#include "train/job_model.h"
#include "train/trainer.h"

using namespace troupe;


TEST_CASE("a run through the actors ends cleanly and matches a plain loop bit for bit", "[actors]") {
  testing::TempDir dir;
  const auto c = testing::small_job_config(dir);
  const auto outcome = testing::run_with_timeout(c);
  REQUIRE(outcome.exit_code == 0);
  CHECK(outcome.message.empty());
  REQUIRE(outcome.steps.size() == 6);
  for (size_t i = 0; i < outcome.steps.size(); ++i) CHECK(outcome.steps[i].step == static_cast<int64_t>(i + 1));

  // Same config without actors: the losses must be identical.
  data::BatchSource src(c);
  train::Trainer trainer(c, train::job_model(c));
  for (const auto& s : outcome.steps) {
    std::vector<std::shared_ptr<const data::Batch>> micro;
    for (int i = 0; i < 2; ++i) micro.push_back(std::make_shared<const data::Batch>(src.next()));
    CHECK(trainer.step(s.step, micro).loss == s.loss);
  }

  // The metrics sink wrote one JSON line per step.
  std::ifstream jsonl(c.job.dump_folder + "/metrics.jsonl");
  std::string line;
  int lines = 0;
  while (std::getline(jsonl, line)) {
    ++lines;
    CHECK(line.find("\"step\":" + std::to_string(lines)) != std::string::npos);
  }
  CHECK(lines == 6);
}

TEST_CASE("every actor answers a status request", "[actors]") {
  testing::TempDir dir;
  auto c = testing::small_job_config(dir);
  c.training.steps = 2;
  std::set<std::string> names;
  cli::RunHooks hooks;
  hooks.on_started = [&](caf::actor_system& sys, const caf::actor& supervisor) {
    caf::scoped_actor self{sys};
    std::vector<caf::actor> children;
    self->request(supervisor, std::chrono::seconds(30), actors::children_atom::value)
        .receive([&](std::vector<caf::actor>& xs) { children = xs; },
                 [&](caf::error& e) { FAIL_CHECK("children: " << to_string(e)); });
    children.push_back(supervisor);
    for (auto& child : children)
      self->request(child, std::chrono::seconds(60), actors::status_atom::value)
          .receive([&](actors::actor_status& s) { names.insert(s.name); },
                   [&](caf::error& e) { FAIL_CHECK("status: " << to_string(e)); });
  };
  const auto outcome = testing::run_with_timeout(c, hooks);
  CHECK(outcome.exit_code == 0);
  CHECK(names == std::set<std::string>{"node_supervisor", "coordinator", "stage[0]", "data_loader[0]", "metrics_sink"});
}

TEST_CASE("a stage busy inside a step and quiet past its limit is stalled; a waiting one never is", "[actors]") {
  actors::StatusBoard board;
  auto stage = board.enroll("stage[3]");
  auto loader = board.enroll("data_loader[3]");
  const actors::StallLimits limits{std::chrono::seconds(10), std::chrono::seconds(5)};
  const auto at = [](int seconds) { return std::chrono::steady_clock::now() + std::chrono::seconds(seconds); };
  stage->set_state("building");
  CHECK_FALSE(stage->stalled(limits, at(1000)));  // not in a step yet: building has timeouts of its own
  stage->set_state("computing");
  stage->set_step(7);
  stage->set_micro_batch(2);
  stage->set_activity("backward", 12);
  const auto shown = stage->snapshot();
  CHECK(shown.activity == "backward of unit 12");
  CHECK(shown.quiet_seconds < 5);
  CHECK_FALSE(stage->stalled(limits, at(0)));
  CHECK_FALSE(stage->stalled(limits, at(7)));  // step 7 is its first: 10 s
  const auto first = stage->stalled(limits, at(11));
  REQUIRE(first);
  CHECK_THAT(*first, Catch::StartsWith("stage[3] made no progress (state computing, step 7, micro-batch 2, "
                                        "last began: backward of unit 12, quiet for 1"));
  stage->set_step(8);
  stage->set_activity("optimizer", -1);
  const auto later = stage->stalled(limits, at(7));  // later steps: 5 s
  REQUIRE(later);
  CHECK_THAT(*later, Catch::Contains("step 8") && Catch::Contains("last began: optimizer, quiet for "));
  CHECK_FALSE(stage->stalled(limits, at(3)));
  // The board finds it among its entries of that kind only, and says where the others are.
  CHECK(board.find_stall("stage", limits) == std::nullopt);  // now: it just moved
  loader->set_state("reading");
  loader->set_step(9);
  auto other = board.enroll("stage[4]");
  other->set_state("computing");
  other->set_step(8);
  other->set_activity("reading back the loss", -1);
  stage->set_activity("forward", 3);
  const actors::StallLimits none{std::chrono::milliseconds(0), std::chrono::milliseconds(0)};
  other->set_state("waiting-data");  // not stalled: it waits
  const auto both = board.find_stall("stage", none);
  REQUIRE(both);
  CHECK_THAT(*both, Catch::StartsWith("stage[3] made no progress (state computing, step 8, micro-batch 2, last began: "
                                      "forward of unit 3, quiet for 0 s); the others: stage[4]: state waiting-data, "
                                      "step 8, last began: reading back the loss, quiet for 0 s") &&
                        !Catch::Contains("data_loader"));
  // A failed job's message lists the stages by rank; of many, the quietest.
  auto shown_ranks = board.local_snapshot();
  for (auto& a : shown_ranks) a.quiet_seconds = a.name == "stage[4]" ? 30 : 1;
  CHECK_THAT(actors::stages_whereabouts(shown_ranks),
             Catch::StartsWith("stage[3]: state computing, step 8, micro-batch 2, last began: forward of unit 3, "
                               "quiet for 1 s; stage[4]: state waiting-data, step 8, last began: reading back the "
                               "loss, quiet for 30 s") && !Catch::Contains("data_loader"));
  CHECK(actors::stages_whereabouts(shown_ranks, 1) ==
        "stage[4]: state waiting-data, step 8, last began: reading back the loss, quiet for 30 s; 1 more, less quiet");
  stage->set_state("idle");  // waiting for its next step: whoever it waits for is the stuck one
  CHECK_FALSE(stage->stalled(limits, at(1000)));
  CHECK(board.find_stall("stage", {std::chrono::milliseconds(0), std::chrono::milliseconds(0)}) == std::nullopt);
  stage->set_state("waiting-data");
  CHECK_FALSE(stage->stalled(limits, at(1000)));
}

// While it exists, `rank`'s stage thread stops for `pause` at its `nth` activity (a unit's forward or
// backward, the optimizer, the read-back), as a thread stuck in a driver call would.
class StuckAt {
 public:
  StuckAt(int64_t rank, int nth, std::chrono::seconds pause) {
    runtime::set_failpoint_handler([=, seen = std::make_shared<std::atomic<int>>(0)](const char* where, int64_t r) {
      if (std::string(where) == "stage.activity" && r == rank && ++*seen == nth) std::this_thread::sleep_for(pause);
    });
  }
  ~StuckAt() { runtime::set_failpoint_handler(nullptr); }
  StuckAt(const StuckAt&) = delete;
  StuckAt& operator=(const StuckAt&) = delete;
};

TEST_CASE("a stage stuck inside a step ends the job with exit 1 and a message naming it and what it began",
          "[actors]") {
  testing::TempDir dir;
  auto c = testing::small_job_config(dir);
  c.comm.init_timeout_seconds = 2;
  c.comm.train_timeout_seconds = 2;  // stuck after 3 s without progress
  // The stage's thread stops for 8 s at its 50th activity (in step 2: a step begins each unit's
  // forward and backward for 2 micro-batches, the optimizer and the read-back), where no timeout
  // of a communicator reaches it. Without the stall watch the job would then finish with exit 0.
  const auto outcome = [&] {
    const StuckAt stuck(0, 50, std::chrono::seconds(8));
    return testing::run_with_timeout(c);
  }();
  CHECK(outcome.exit_code == 1);
  CHECK_THAT(outcome.message, Catch::Contains("stage[0] made no progress (state computing, step 2") &&
                                  Catch::Contains("last began: ") && Catch::Contains("every thread's stack"));
  CHECK(outcome.stuck);
}

TEST_CASE("a rank stuck while its peer's collective times out: the job's error says where every rank was",
          "[actors]") {
  testing::TempDir dir;
  auto c = testing::small_job_config(dir);
  c.job.local_ranks = 2;  // FSDP over two CPU ranks (Gloo)
  c.training.global_batch_size = -1;
  c.comm.train_timeout_seconds = 4;  // rank 0's collective gives up after 4 s; a stall is 6 s
  const auto outcome = [&] {
    const StuckAt stuck(1, 30, std::chrono::seconds(10));  // in step 2
    return testing::run_with_timeout(c);
  }();
  CHECK(outcome.exit_code == 1);
  CHECK_FALSE(outcome.stuck);  // the peer's timeout came first
  CHECK_THAT(outcome.message, Catch::Contains("[where the ranks were: stage[0]: state failed, step ") &&
                                  Catch::Contains("; stage[1]: state computing, step ") &&
                                  Catch::Contains("last began: ") && Catch::Contains(" in step 2, failed after 4 s") &&
                                  Catch::Contains("[each rank's last collectives: " + c.job.dump_folder + "/comm_traces]"));
  // Each rank's record: the operation rank 0 gave up on is one that rank 1 never issued.
  auto record = [&](int rank) {
    return nlohmann::json::parse(std::ifstream(c.job.dump_folder + "/comm_traces/rank_" + std::to_string(rank) + ".json"));
  };
  const auto r0 = record(0), r1 = record(1);
  const auto failed = std::find_if(r0["entries"].begin(), r0["entries"].end(),
                                   [](const auto& e) { return e["state"] == "failed"; });
  REQUIRE(failed != r0["entries"].end());
  int64_t peer_last = 0;
  for (const auto& e : r1["entries"])
    if (e["group"] == (*failed)["group"]) peer_last = std::max(peer_last, e["seq"].get<int64_t>());
  CHECK(peer_last > 0);
  CHECK(peer_last < (*failed)["seq"].get<int64_t>());
  CHECK_THAT(comm::flight_record_report(c.job.dump_folder + "/comm_traces"),
             Catch::Contains("behind: rank 1 (issued up to #" + std::to_string(peer_last)));
}

TEST_CASE("the board remembers each enrolling thread; a job returns once its actors' threads are gone",
          "[actors]") {
  actors::StatusBoard board;
  std::promise<int> tid;
  std::promise<void> may_exit;
  auto exit_allowed = may_exit.get_future().share();
  std::thread([&, exit_allowed] {
    board.enroll("worker");
    tid.set_value(static_cast<int>(gettid()));
    exit_allowed.wait();
  }).detach();
  const int worker = tid.get_future().get();
  REQUIRE(board.enrolled_threads() == std::vector<int>{worker});
  CHECK_FALSE(runtime::await_threads_gone({worker}, std::chrono::milliseconds(100)));  // still there
  may_exit.set_value();
  CHECK(runtime::await_threads_gone({worker}, std::chrono::seconds(10)));

  // A whole job: after run_training, no thread of its actors is left.
  testing::TempDir dir;
  auto c = testing::small_job_config(dir);
  c.training.steps = 2;
  c.job.local_ranks = 2;
  c.training.global_batch_size = -1;
  REQUIRE(testing::run_with_timeout(c).exit_code == 0);
  int left = 0;
  for (const auto& entry : std::filesystem::directory_iterator("/proc/self/task")) {
    char name[64] = {};
    std::ifstream(entry.path() / "comm").getline(name, sizeof name);
    left += std::string(name) == "caf.actor";
  }
  CHECK(left == 0);
}

TEST_CASE("a stop request ends the run after the running step with exit 0", "[actors]") {
  testing::TempDir dir;
  auto c = testing::small_job_config(dir);
  c.training.steps = 10'000;
  std::atomic<int> stops{0};
  cli::RunHooks hooks;
  hooks.stop_requests = &stops;
  hooks.on_started = [&](caf::actor_system&, const caf::actor&) { stops = 1; };
  const auto outcome = testing::run_with_timeout(c, hooks);
  CHECK(outcome.exit_code == 0);
  CHECK(outcome.steps.size() < 10);
  CHECK_THAT(outcome.message, Catch::Contains("stopped by signal"));
}

TEST_CASE("a data loader that cannot read its dataset fails the run with a clear message", "[actors]") {
  testing::TempDir dir;
  auto c = testing::small_job_config(dir);
  c.training.dataset_path = dir.file("gone.txt");
  const auto outcome = testing::run_with_timeout(c);
  CHECK(outcome.exit_code == 1);
  CHECK_THAT(outcome.message, Catch::Contains("gone.txt"));
}

TEST_CASE("the data loader's status counts the documents it skipped, by reason", "[actors]") {
  testing::TempDir dir;
  auto c = testing::small_job_config(dir);
  c.training.dataset = "jsonl";
  std::string lines;
  for (int i = 0; i < 40; ++i) lines += "{\"text\": \"In the beginning God created the heaven and the earth " + std::to_string(i) + "\"}\n";
  lines += "not json\n{\"body\": \"no text field\"}\n{\"text\": \"\"}\n";
  c.training.dataset_path = dir.write("bad.jsonl", lines);
  caf::actor_system_config sys_cfg;
  caf::actor_system sys{sys_cfg};
  caf::scoped_actor self{sys};
  auto board = std::make_shared<actors::StatusBoard>(0);
  auto loader = actors::spawn_data_loader(sys, c, 0, {}, self, board);
  // Enough batches to pass every document once.
  self->send(loader, actors::credit_atom::value, int64_t{40}, caf::actor_cast<caf::actor>(self));
  for (int i = 0; i < 40; ++i)
    self->receive([](actors::batch_atom, const actors::batch_handle&) {},
                  [](actors::failure_atom, const std::string& m) { FAIL(m); });
  self->request(loader, std::chrono::seconds(30), actors::status_atom::value)
      .receive([&](actors::actor_status& s) {
                 CHECK(s.detail == "skipped documents: 3 (empty 1, without the text field 1, not JSON 1, invalid UTF-8 0)");
               },
               [&](caf::error& e) { FAIL_CHECK("status: " << to_string(e)); });
  self->send_exit(loader, caf::exit_reason::user_shutdown);
}

namespace {

testing::ChildProcess start_long_training(const testing::TempDir& dir) {
  const auto slice = testing::corpus_slice(dir);
  return testing::ChildProcess({testing::troupe_binary(), "train", "--config",
                                testing::source_dir() + "/configs/llama3_debug.toml", "--model.tokenizer_path",
                                testing::source_dir() + "/data/kjv/tokenizer.json", "--training.dataset=text",
                                "--training.dataset_path", slice, "--training.steps", "100000", "--training.seq_len",
                                "32", "--training.local_batch_size", "2", "--metrics.log_freq", "1", "--job.dump_folder",
                                dir.file("dump"), "--job.device", "cpu", "--activation_checkpoint.mode", "selective",
                                "--activation_checkpoint.selective_ac_option", "op"});
}

}  // namespace

TEST_CASE("troupe train: SIGINT or SIGTERM finishes the step, flushes and exits 0", "[cli]") {
  for (auto [sig, name] : {std::pair{SIGINT, "SIGINT"}, std::pair{SIGTERM, "SIGTERM"}}) {
    INFO(name);
    testing::TempDir dir;
    auto p = start_long_training(dir);
    std::string out;
    REQUIRE(p.wait_for_line("step:", out));
    p.signal(sig);
    const int code = p.wait(60, out);
    INFO(out);
    CHECK(code == 0);
    CHECK_THAT(out, Catch::Contains(name) && Catch::Contains("stopped by signal"));
    CHECK_THAT(out, Catch::Contains("| recompute: element-wise ops |"));  // the banner names the policy
    std::ifstream jsonl(dir.file("dump") + "/metrics.jsonl");
    std::string line;
    CHECK(std::getline(jsonl, line));
  }
}

TEST_CASE("troupe train: a second signal abandons the step and exits 130", "[cli]") {
  testing::TempDir dir;
  auto p = start_long_training(dir);
  std::string out;
  REQUIRE(p.wait_for_line("step:", out));
  p.signal(SIGINT);
  // Signals of one kind do not queue: send the second once the first has been handled.
  REQUIRE(p.wait_for_line("again to abandon", out));
  p.signal(SIGINT);
  const int code = p.wait(60, out);
  INFO(out);
  CHECK(code == 130);
  CHECK_THAT(out, Catch::Contains("second signal"));
}

TEST_CASE("troupe train: a bad config exits 2 with one line naming the problem", "[cli]") {
  testing::ChildProcess p({testing::troupe_binary(), "train", "--config", testing::source_dir() + "/configs/llama3_debug.toml",
                           "--training.step", "5"});
  std::string out;
  const int code = p.wait(30, out);
  CHECK(code == 2);
  CHECK_THAT(out, Catch::Contains("training.step") && Catch::Contains("did you mean 'training.steps'"));
  CHECK(std::count(out.begin(), out.end(), '\n') == 1);
}

TEST_CASE("troupe --help lists the subcommands and train --help the override syntax", "[cli]") {
  testing::ChildProcess p({testing::troupe_binary(), "train", "--help"});
  std::string out;
  CHECK(p.wait(30, out) == 0);
  CHECK_THAT(out, Catch::Contains("--config") && Catch::Contains("--section.key"));
}

TEST_CASE("a failure in any actor's start-up ends the job within seconds with its message", "[actors]") {
  // Each actor of a 2-rank job with checkpoints, failing as it starts: the job must end (not
  // print "unhandled exception" and wait forever), failed, naming the actor's error.
  testing::TempDir dir;
  auto c = testing::small_job_config(dir);
  c.job.local_ranks = 2;
  c.training.local_batch_size = 1;
  c.training.global_batch_size = 2;
  c.checkpoint.enable = true;
  for (const std::string where : {"node_supervisor.start", "coordinator.start", "stage.start", "data_loader.start",
                                  "checkpoint_writer.start", "metrics_sink.start"}) {
    INFO(where);
    runtime::set_failpoint_handler([where](const char* at, int64_t rank) {
      if (where == at && rank <= 1) throw std::runtime_error("injected at " + where);
    });
    const auto start = std::chrono::steady_clock::now();
    const auto outcome = testing::run_with_timeout(c);
    runtime::set_failpoint_handler({});
    CHECK(outcome.exit_code == runtime::exit_code::failed);
    CHECK_THAT(outcome.message, Catch::Contains("injected at " + where));
    CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(20));
  }
}

TEST_CASE("troupe train: a layout that does not fit the world exits 2 at once; a signal ends a stuck job", "[cli]") {
  testing::TempDir dir;
  const auto toml = testing::source_dir() + "/configs/llama3_debug.toml";
  const std::vector<std::string> common{"--model.tokenizer_path", testing::source_dir() + "/data/kjv/tokenizer.json",
                                        "--job.dump_folder", dir.file("dump"), "--inspect.enable", "false",
                                        "--training.steps", "3"};
  auto run = [&](std::vector<std::string> flags, std::string& out) {
    std::vector<std::string> argv{testing::troupe_binary(), "train", "--config", toml};
    argv.insert(argv.end(), common.begin(), common.end());
    argv.insert(argv.end(), flags.begin(), flags.end());
    testing::ChildProcess p(argv);
    return p.wait(30, out);
  };
  std::string out;
  CHECK(run({"--job.local_ranks", "2", "--parallelism.data_parallel_shard_degree", "3"}, out) == 2);
  CHECK(std::count(out.begin(), out.end(), '\n') == 1);
  CHECK_THAT(out, Catch::Contains("data_parallel_shard_degree 3 = 3, but the world has 2 ranks"));
  out.clear();
  CHECK(run({"--job.local_ranks", "2", "--parallelism.pipeline_parallel_degree", "2",
             "--parallelism.pipeline_parallel_layers_per_stage", "7"}, out) == 2);
  CHECK_THAT(out, Catch::Contains("do not spread evenly over pipeline_parallel_degree 2"));
  out.clear();
  CHECK(run({"--job.local_ranks", "2", "--training.global_batch_size", "24"}, out) == 2);
  CHECK_THAT(out, Catch::Contains("training.global_batch_size 24 is not a multiple of local_batch_size x "
                                  "data-parallel degree = 16"));
  // A sequence longer than the model's, or one whose activations cannot fit, names training.seq_len.
  out.clear();
  CHECK(run({"--training.seq_len", "100000000"}, out) == 2);
  CHECK_THAT(out, Catch::Contains("training.seq_len = 100000000 is more than llama3's longest sequence, 131072 positions"));
  out.clear();
  CHECK(run({"--training.seq_len", "131072", "--training.local_batch_size", "4096"}, out) == 2);
  CHECK_THAT(out, Catch::Contains("training.seq_len = 131072 with training.local_batch_size = 4096: the activations") &&
                      Catch::Contains("GiB of this machine; lower either"));
  CHECK(!std::filesystem::exists(dir.file("dump") + "/metrics.jsonl"));

  // A stage that never starts: no step can finish, and SIGTERM still ends the process
  // within comm.train_timeout_seconds + 60 s.
  setenv("TROUPE_FAILPOINT", "stage.start=hang", 1);
  std::vector<std::string> argv{testing::troupe_binary(), "train", "--config", toml, "--comm.train_timeout_seconds", "1"};
  argv.insert(argv.end(), common.begin(), common.end());
  testing::ChildProcess p(argv);
  unsetenv("TROUPE_FAILPOINT");
  REQUIRE(p.wait_for_line("troupe: ", out));
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  const auto start = std::chrono::steady_clock::now();
  p.signal(SIGTERM);
  const int code = p.wait(90, out);
  INFO(out);
  CHECK(code == runtime::exit_code::interrupted);
  CHECK_THAT(out, Catch::Contains("did not stop within comm.train_timeout_seconds + 60 s (61 s)"));
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(75));
}

TEST_CASE("troupe models lists every family and flavor with its parameter counts", "[cli]") {
  testing::ChildProcess p({testing::troupe_binary(), "models", "--dimensions"});
  std::string out;
  CHECK(p.wait(30, out) == 0);
  // Qwen3 1.7B: 1,720,574,976 in all, less its 151,936 x 2048 (tied) embedding.
  CHECK_THAT(out, Catch::Contains("qwen3    1.7B                       1720574976       1409410048  1.72B") &&
                      Catch::Contains("llama3   8B                         8030261248") &&
                      Catch::Contains("head_dim=128") && Catch::Contains("qwen3    debugmodel"));
}
