// The inspection endpoint of a running CPU job with 2 ranks: the actor list, pause / resume /
// checkpoint-now / log_freq, bad and unauthenticated requests, Prometheus text; and the
// `troupe inspect` console under tmux.
#include <httplib.h>
#include <nlohmann/json.hpp>
#include <catch2/catch.hpp>

#include <atomic>
#include <fstream>
#include <future>
#include <map>
#include <set>
#include <thread>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "actors/step_record.h"
#include "checkpoint/checkpoint_folder.h"
#include "cli/inspect_view.h"
#include "test_support.h"

using namespace troupe;
using namespace troupe::testing;
using json = nlohmann::json;

namespace {

config::JobConfig long_job(const TempDir& dir, int port) {
  auto c = small_job_config(dir);
  c.job.local_ranks = 2;
  c.training.global_batch_size = -1;
  c.training.steps = 100000;  // ended by a stop request
  c.metrics.log_freq = 1000;
  c.checkpoint.enable = true;
  c.checkpoint.interval = 100000;
  c.inspect.port = port;
  return c;
}

// A job running on a thread; the destructor stops it.
class RunningJob {
 public:
  explicit RunningJob(config::JobConfig c) : cfg_(std::move(c)) {
    hooks_.stop_requests = &stop_;
    future_ = std::async(std::launch::async, [this] { return cli::run_training(cfg_, hooks_); });
  }
  ~RunningJob() { stop(); }
  actors::TrainOutcome stop() {
    stop_ = 1;
    if (future_.valid()) {
      REQUIRE(future_.wait_for(std::chrono::seconds(120)) == std::future_status::ready);
      outcome_ = future_.get();
    }
    return outcome_;
  }

 private:
  config::JobConfig cfg_;
  std::atomic<int> stop_{0};
  cli::RunHooks hooks_;
  std::future<actors::TrainOutcome> future_;
  actors::TrainOutcome outcome_;
};

json get_status(httplib::Client& c) {
  auto res = c.Get("/api/status");
  REQUIRE(res);
  REQUIRE(res->status == 200);
  return json::parse(res->body);
}

// Polls until pred(status) holds (30 s at most).
template <class Pred>
json wait_until(httplib::Client& c, Pred pred, const char* what) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (std::chrono::steady_clock::now() < deadline) {
    auto res = c.Get("/api/status");  // the endpoint may not listen yet
    if (res && res->status == 200) {
      auto s = json::parse(res->body);
      if (pred(s)) return s;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  FAIL("timed out waiting for " << what);
  return {};
}

// The losses of metrics.jsonl by step.
std::map<int64_t, double> jsonl_losses(const std::string& path) {
  std::map<int64_t, double> out;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) {
    const auto r = json::parse(line);
    if (r.contains("loss")) out[r["step"].get<int64_t>()] = r["loss"].get<double>();
  }
  return out;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

}  // namespace

TEST_CASE("inspection endpoint: every rank's actors, pause, resume, checkpoint now, log_freq, bad requests",
          "[inspect]") {
  TempDir dir;
  const int port = listen_port(0);
  auto cfg = long_job(dir, port);
  RunningJob job(cfg);
  httplib::Client c("127.0.0.1", port);
  auto s = wait_until(c, [](const json& s) { return s["job"]["step"].get<int>() >= 2; }, "step 2");

  std::set<std::string> names;
  for (const auto& a : s["actors"]) names.insert(a["name"].get<std::string>());
  CHECK(names == std::set<std::string>{"node_supervisor", "coordinator", "metrics_sink", "stage[0]", "stage[1]",
                                       "data_loader[0]", "data_loader[1]", "checkpoint_writer[0]",
                                       "checkpoint_writer[1]"});
  CHECK(s["job"]["ranks"] == 2);
  for (const auto& a : s["actors"])
    if (a["kind"] == "stage") {
      CHECK(a["rank"].get<int>() == (a["name"] == "stage[0]" ? 0 : 1));
      CHECK(a["micro_batch"].get<int>() == 1);  // one micro-batch per step in this job
      CHECK(a["step"].get<int>() >= 2);
      // Its recent messages include the coordinator's step requests.
      bool saw_step = false;
      for (const auto& m : a["recent_messages"]) saw_step = saw_step || m.get<std::string>().find("step") != std::string::npos;
      CHECK(saw_step);
    }

  // Pause: the step counter holds.
  auto res = c.Post("/api/pause", "", "text/plain");
  REQUIRE(res);
  CHECK(res->status == 202);
  s = wait_until(c, [](const json& s) { return s["job"]["state"] == "paused"; }, "paused");
  const int held = s["job"]["step"];
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  CHECK(get_status(c)["job"]["step"].get<int>() == held);

  // Checkpoint now (while paused: the last finished step), committed.
  res = c.Post("/api/checkpoint", "", "text/plain");
  REQUIRE(res);
  CHECK(res->status == 202);
  const auto want = "step-" + std::to_string(held);
  wait_until(c, [&](const json& s) { return s["job"]["last_checkpoint"] == want; }, "the checkpoint");
  CHECK(std::filesystem::exists(checkpoint::checkpoint_folder(cfg) + "/" + want + "/metadata.json"));

  // Malformed requests: 4xx, and training goes on after resume.
  CHECK(c.Get("/api/nothing")->status == 404);
  CHECK(c.Post("/api/log_freq?value=abc", "", "text/plain")->status == 400);
  CHECK(c.Post("/api/log_freq?value=0", "", "text/plain")->status == 400);
  res = c.Post("/api/log_freq?value=7", "", "text/plain");
  CHECK(res->status == 202);
  wait_until(c, [](const json& s) { return s["job"]["log_freq"] == 7; }, "log_freq 7");
  CHECK(c.Post("/api/resume", "", "text/plain")->status == 202);
  wait_until(c, [&](const json& s) { return s["job"]["step"].get<int>() >= held + 2; }, "steps after resume");

  // Prometheus text.
  res = c.Get("/metrics");
  REQUIRE(res);
  CHECK(res->status == 200);
  CHECK_THAT(res->body, Catch::Contains("# TYPE troupe_step gauge") && Catch::Contains("troupe_loss ") &&
                            Catch::Contains("troupe_actor_mailbox{name=\"stage[1]\",kind=\"stage\",node=\"0\",rank=\"1\"}") &&
                            Catch::Contains("# TYPE troupe_actor_quiet_seconds gauge\ntroupe_actor_quiet_seconds{"));
  // The web page is served from the binary, and the charting library it draws with is Debian's
  // file as packaged.
  res = c.Get("/");
  REQUIRE(res);
  CHECK_THAT(res->body, Catch::Contains("/api/status"));
  for (const auto& [path, type] : {std::pair{"dygraph.min.js", "application/javascript"}, {"dygraph.min.css", "text/css"}}) {
    res = c.Get((std::string("/") + path).c_str());
    REQUIRE(res);
    CHECK(res->get_header_value("Content-Type").starts_with(type));
    CHECK(res->body == read_file(std::string("/usr/share/javascript/dygraphs/") + path));
  }

  // Each rank's last step, split: every part is a share of the step, and two Gloo ranks wait
  // for their gradients' reductions.
  s = get_status(c);
  REQUIRE(s["rank_steps"].size() == 2);
  for (int r = 0; r < 2; ++r) {
    const auto& row = s["rank_steps"][r];
    CHECK(row["rank"] == r);
    const double step = row["step_seconds"];
    double parts = 0;
    for (const char* part : {"compute_seconds", "comm_wait_seconds", "data_wait_seconds", "optimizer_seconds"}) {
      CHECK(row[part].get<double>() >= 0);
      parts += row[part].get<double>();
    }
    CHECK(parts == Approx(step).epsilon(1e-6));
    CHECK(row["comm_wait_seconds"].get<double>() > 0);
    CHECK(row["memory_kind"] == "rss");
    CHECK(row["memory_bytes"].get<double>() > 0);
    CHECK(row["recent_step_seconds"].size() == std::min<size_t>(row["step"].get<size_t>(), actors::StepRecord::kRecent));
  }
  CHECK(s["job"]["moe_step"] == 0);  // a dense model
  CHECK(s["job"]["timeline_step"] == 0);  // no pipeline

  // The history is every step so far, as metrics.jsonl has it; ?after gives the newer ones only.
  const auto losses = jsonl_losses(cfg.job.dump_folder + "/metrics.jsonl");
  auto history = json::parse(c.Get("/api/history")->body);
  CHECK(history["columns"].size() == 7);
  REQUIRE(history["rows"].size() >= losses.size());
  for (size_t i = 0; i < losses.size(); ++i) {
    const auto& row = history["rows"][i];
    CHECK(row[0].get<int64_t>() == static_cast<int64_t>(i + 1));
    CHECK(row[1].get<double>() == losses.at(static_cast<int64_t>(i + 1)));
  }
  const auto last = history["rows"].back()[0].get<double>();
  CHECK(json::parse(c.Get(("/api/history?after=" + std::to_string(last - 1)).c_str())->body)["rows"].size() == 1);
  CHECK(c.Get("/api/history?after=x")->status == 400);

  const auto outcome = job.stop();
  CHECK(outcome.exit_code == 0);
}

TEST_CASE("troupe inspect's table: a rank quiet for a while shows what it began and its collective", "[inspect]") {
  auto stage = [](int rank, double quiet, const std::string& collective) {
    return nlohmann::json{{"name", "stage[" + std::to_string(rank) + "]"}, {"kind", "stage"}, {"node", 0},
                          {"rank", rank}, {"state", "computing"}, {"step", 2}, {"micro_batch", 1}, {"mailbox", 0},
                          {"handled", 5}, {"busy_seconds", 1.0}, {"age_seconds", 20.0}, {"bytes_in_flight", 0},
                          {"last_error", ""}, {"activity", "backward of unit 4"}, {"quiet_seconds", quiet},
                          {"collective", collective}};
  };
  cli::InspectView view;
  view.update({{"job", {{"state", "running"}}},
               {"time", 0.0},
               {"actors",
                {stage(0, 2, "all_gather #40 of dp_shard in step 2, unfinished for 2 s"),
                 stage(1, 31, "reduce_scatter #35 of dp_shard in step 2, unfinished for 31 s")}}});
  const auto rows = view.rows();
  REQUIRE(rows.size() == 2);
  CHECK_THAT(rows[0], Catch::EndsWith("  backward of unit 4"));
  CHECK_THAT(rows[1], Catch::EndsWith("backward of unit 4 (31 s ago); reduce_scatter #35 of dp_shard in step 2, "
                                      "unfinished for 31 s"));
}

TEST_CASE("inspection endpoint: a token is required when set", "[inspect]") {
  TempDir dir;
  const int port = listen_port(1);
  auto cfg = long_job(dir, port);
  cfg.inspect.token = "s3cret";
  RunningJob job(cfg);
  httplib::Client anonymous("127.0.0.1", port), wrong("127.0.0.1", port), owner("127.0.0.1", port);
  wrong.set_bearer_token_auth("guess");
  owner.set_bearer_token_auth("s3cret");
  wait_until(owner, [](const json& s) { return s["job"]["step"].get<int>() >= 1; }, "step 1");
  CHECK(anonymous.Get("/api/status")->status == 401);
  CHECK(wrong.Get("/api/status")->status == 401);
  CHECK(wrong.Post("/api/pause", "", "text/plain")->status == 401);
  CHECK(anonymous.Get("/api/status?token=s3cret")->status == 200);
  // The refused pause did nothing: training goes on.
  const int step = get_status(owner)["job"]["step"];
  wait_until(owner, [&](const json& s) { return s["job"]["step"].get<int>() >= step + 2; }, "steps");
  CHECK(get_status(owner)["job"]["state"] == "running");
}

TEST_CASE("inspection endpoint: 200 idle connections held open do not starve an authorised request; a blank token "
          "is refused", "[inspect]") {
  TempDir dir;
  const int port = listen_port(3);
  auto cfg = long_job(dir, port);
  cfg.inspect.token = "s3cret";
  RunningJob job(cfg);
  httplib::Client owner("127.0.0.1", port);
  owner.set_bearer_token_auth("s3cret");
  owner.set_read_timeout(5, 0);
  owner.set_connection_timeout(5, 0);
  wait_until(owner, [](const json& s) { return s["job"]["step"].get<int>() >= 1; }, "step 1");
  // Hostile clients: connected, sending nothing (or half a request line), holding on.
  std::vector<int> held;
  for (int i = 0; i < 200; ++i) {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    REQUIRE(fd >= 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) {
      if (i % 2) [[maybe_unused]] auto n = ::write(fd, "GET /api/sta", 12);
      held.push_back(fd);
    } else {
      ::close(fd);
    }
  }
  CHECK(held.size() >= 150);  // the listen backlog may refuse some; held ones are what matters
  for (int attempt = 0; attempt < 3; ++attempt) {
    const auto start = std::chrono::steady_clock::now();
    const auto res = owner.Get("/api/status");
    const auto took = std::chrono::steady_clock::now() - start;
    INFO("attempt " << attempt << " took " << std::chrono::duration<double>(took).count() << " s");
    REQUIRE(res);
    CHECK(res->status == 200);
    CHECK(took < std::chrono::seconds(5));
  }
  for (int fd : held) ::close(fd);
  job.stop();
  // A token of blanks is no token: refused before anything starts.
  for (const std::string blank : {" ", "\t \n"}) {
    auto bad = cfg;
    bad.inspect.token = blank;
    CHECK_THROWS_WITH(config::load_job_config("", {{"model.tokenizer_path", bad.model.tokenizer_path},
                                                   {"inspect.token", blank}}),
                      Catch::Contains("inspect.token must be empty (no token) or a token with a non-blank character"));
  }
}

TEST_CASE("troupe inspect: the console under tmux shows the actor table; --once --json for scripts", "[inspect]") {
  TempDir dir;
  const int port = listen_port(2);
  RunningJob job(long_job(dir, port));
  httplib::Client c("127.0.0.1", port);
  wait_until(c, [](const json& s) { return s["job"]["step"].get<int>() >= 1; }, "step 1");
  const auto address = "127.0.0.1:" + std::to_string(port);

  const auto out = dir.file("once.json");
  REQUIRE(run_command(troupe_binary() + " inspect " + address + " --once --json > " + out) == 0);
  std::ifstream in(out);
  const auto snapshot = json::parse(in);
  CHECK(snapshot["actors"].size() == 9);
  // Each stage says what it began last (a unit's forward or backward, the optimizer, the read-back).
  for (const auto& a : snapshot["actors"])
    if (a["kind"] == "stage") CHECK_FALSE(a["activity"].get<std::string>().empty());

  const auto session = "troupe-test-" + std::to_string(getpid());
  REQUIRE(run_command("tmux new-session -d -s " + session + " -x 160 -y 30 '" + troupe_binary() + " inspect " +
                      address + "'") == 0);
  std::string screen;
  for (int i = 0; i < 50 && screen.find("stage[1]") == std::string::npos; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    const auto capture = dir.file("pane.txt");
    run_command("tmux capture-pane -p -t " + session + " > " + capture);
    std::ifstream pane(capture);
    screen.assign(std::istreambuf_iterator<char>(pane), {});
  }
  run_command("tmux send-keys -t " + session + " q; sleep 0.3; tmux kill-session -t " + session + " 2>/dev/null");
  INFO(screen);
  CHECK_THAT(screen, Catch::Contains("ACTOR") && Catch::Contains("KIND") && Catch::Contains("STEP:MB") &&
                         Catch::Contains("checkpoint_writer") && Catch::Contains("stage[0]") &&
                         Catch::Contains("stage[1]") && Catch::Contains("data_loader[1]") &&
                         Catch::Contains("2 rank(s)") && Catch::Contains("WHAT IT BEGAN LAST"));
  CHECK_THAT(screen, Catch::Contains(" of unit ") || Catch::Contains("optimizer") ||
                         Catch::Contains("reading back the loss"));
}

TEST_CASE("the page's step record: a long run thins its start and keeps its end, a resumed run replaces steps, "
          "MoE loads and pipeline times", "[inspect]") {
  actors::StepRecord record;
  const size_t steps = 3 * actors::StepRecord::kMaxRows;
  for (size_t s = 1; s <= steps; ++s) record.add_step({static_cast<double>(s), 1.0 / static_cast<double>(s)}, "rss");
  auto rows = record.history_after(-1).rows;
  CHECK(rows.size() <= actors::StepRecord::kMaxRows);
  CHECK(rows.front()[0] == 1);
  CHECK(rows.back()[0] == static_cast<double>(steps));
  for (size_t i = 1; i < rows.size(); ++i) CHECK(rows[i][0] > rows[i - 1][0]);
  // The last thousand steps are whole.
  CHECK(record.history_after(static_cast<double>(steps - 1000)).rows.size() == 1000);
  // A run resumed from step 100 of an earlier one: its steps replace the later ones.
  actors::StepRecord resumed;
  for (int s = 1; s <= 150; ++s) resumed.add_step({static_cast<double>(s), 1.0}, "rss");
  resumed.add_step({101, 2.0}, "gpu_active");
  rows = resumed.history_after(-1).rows;
  CHECK(rows.size() == 101);
  CHECK(rows.back()[1] == 2.0);
  CHECK(resumed.history_after(-1).memory_kind == "gpu_active");
  resumed.add_validation(50, 3.0);
  resumed.add_validation(100, 2.5);
  resumed.add_validation(50, 2.9);
  CHECK(resumed.history_after(-1).validation == std::vector<std::pair<int64_t, double>>{{50, 2.9}});

  // MoE loads: of each layer the first rank's that reports it (pipeline stages hold different
  // layers); pipeline actions from the step's first.
  std::vector<train::StepStats> ranks(2);
  ranks[0].step = ranks[1].step = 7;
  ranks[1].rank = 1;
  ranks[0].aux_counts = {{"moe.layers.0.tokens_per_expert", {3, 1}}};
  ranks[1].aux_counts = {{"moe.layers.1.tokens_per_expert", {0, 4}}, {"moe.layers.0.tokens_per_expert", {9, 9}}};
  ranks[0].pipeline = {{"F", 0, 0, 1000.0, 1002.5}};
  ranks[1].pipeline = {{"F", 1, 0, 1003.0, 1004.0}};
  record.add_rank_steps(ranks);
  const auto [moe_step, loads] = record.moe_loads();
  CHECK(moe_step == 7);
  CHECK(loads == actors::StepRecord::Loads{{"moe.layers.0.tokens_per_expert", {3, 1}}, {"moe.layers.1.tokens_per_expert", {0, 4}}});
  const auto [pipeline_step, pipeline] = record.pipeline();
  CHECK(pipeline_step == 7);
  REQUIRE(pipeline.size() == 2);
  CHECK(pipeline[0].second[0].start_ms == 0);
  CHECK(pipeline[1].second[0].start_ms == 3.0);
  CHECK(pipeline[1].second[0].end_ms == 4.0);
  CHECK(record.rank_steps()[1].last.rank == 1);
  // A later step without them keeps the last ones shown.
  for (auto& r : ranks) r.step = 8, r.aux_counts.clear(), r.pipeline.clear();
  record.add_rank_steps(ranks);
  CHECK(record.moe_step() == 7);
  CHECK(record.pipeline_step() == 7);
  CHECK(record.rank_steps()[0].recent_step_seconds.size() == 2);
}

TEST_CASE("troupe inspect's MoE heat map: a row per layer, a column per expert, darker for a larger share", "[inspect]") {
  cli::InspectView view;
  CHECK(view.moe_heat_map().empty());
  view.update_moe(json::parse(R"({"step": 12, "layers": [{"name": "layers.1", "tokens_per_expert": [0, 10, 30, 60]},
                                                         {"name": "layers.2", "tokens_per_expert": [25, 25, 25, 25]}]})"));
  CHECK(view.moe_step() == 12);
  const auto map = view.moe_heat_map();
  REQUIRE(map.size() == 3);
  CHECK_THAT(map[0], Catch::Contains("step 12"));
  CHECK(map[1] == "layers.1 | =@@| busiest 60% of 100 tokens");
  CHECK(map[2] == "layers.2 |@@@@| busiest 25% of 100 tokens");
}

TEST_CASE("inspection endpoint: a resumed run's history starts at the run's first step", "[inspect]") {
  TempDir dir;
  auto first = small_job_config(dir);
  first.checkpoint.enable = true;
  first.checkpoint.interval = 3;
  first.training.steps = 3;
  REQUIRE(run_with_timeout(first, {}).exit_code == 0);
  const int port = listen_port(1);
  auto cfg = long_job(dir, port);
  cfg.job.local_ranks = 1;
  cfg.training.global_batch_size = first.training.global_batch_size;
  RunningJob job(cfg);
  httplib::Client c("127.0.0.1", port);
  wait_until(c, [](const json& s) { return s["job"]["step"].get<int>() >= 5; }, "step 5");
  const auto rows = json::parse(c.Get("/api/history")->body)["rows"];
  REQUIRE(rows.size() >= 5);
  for (size_t i = 0; i < 5; ++i) CHECK(rows[i][0].get<int>() == static_cast<int>(i + 1));
  const auto losses = jsonl_losses(cfg.job.dump_folder + "/metrics.jsonl");
  CHECK(rows[0][1].get<double>() == losses.at(1));
  CHECK(rows[3][1].get<double>() == losses.at(4));
}

TEST_CASE("inspection endpoint: a MoE model's load per layer and expert, a profiled pipeline's timeline", "[inspect]") {
  TempDir dir;
  const int port = listen_port(2);
  auto cfg = long_job(dir, port);
  cfg.checkpoint.enable = false;
  cfg.model.name = "qwen3_moe";
  cfg.model.flavor = "debugmodel";  // 4 MoE blocks of 8 experts, top 2
  cfg.parallelism.pipeline_parallel_degree = 2;
  cfg.parallelism.pipeline_parallel_microbatch_size = 1;
  cfg.training.global_batch_size = 4;
  cfg.profiling.enable_profiling = true;
  RunningJob job(cfg);
  httplib::Client c("127.0.0.1", port);
  const auto s = wait_until(c, [](const json& s) { return s["job"]["moe_step"].get<int>() >= 2; }, "MoE loads");
  CHECK(s["job"]["timeline_step"].get<int>() >= 1);

  // Every block's routed tokens: the step's tokens (4 x 32), twice each (top 2); the blocks
  // come from both stages.
  const auto moe = json::parse(c.Get("/api/moe")->body);
  REQUIRE(moe["layers"].size() == 4);
  std::set<std::string> names;
  for (const auto& l : moe["layers"]) {
    names.insert(l["name"].get<std::string>());
    REQUIRE(l["tokens_per_expert"].size() == 8);
    double total = 0;
    for (const auto& n : l["tokens_per_expert"]) total += n.get<double>();
    CHECK(total == 4 * 32 * 2);
  }
  CHECK(names == std::set<std::string>{"layers.0", "layers.1", "layers.2", "layers.3"});

  // Each rank's actions: a forward and a backward per micro-batch of its stage, in time order.
  const auto timeline = json::parse(c.Get("/api/timeline")->body);
  REQUIRE(timeline["ranks"].size() == 2);
  for (const auto& r : timeline["ranks"]) {
    int forwards = 0, backwards = 0;
    for (const auto& a : r["actions"]) {
      if (a["op"] == "F" || a["op"] == "B") CHECK(a["stage"] == r["rank"]);  // a transfer's is the receiver's
      CHECK(a["end_ms"].get<double>() >= a["start_ms"].get<double>());
      CHECK(a["start_ms"].get<double>() >= 0);
      forwards += a["op"] == "F";
      backwards += a["op"] == "B";
    }
    CHECK(forwards == 4);
    CHECK(backwards == 4);
  }
}
