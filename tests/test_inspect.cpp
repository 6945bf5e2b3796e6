// The inspection endpoint of a running CPU job with 2 ranks: the actor list, pause / resume /
// checkpoint-now / log_freq, bad and unauthenticated requests, Prometheus text; and the
// `troupe inspect` console under tmux.
#include <httplib.h>
#include <nlohmann/json.hpp>
#include <catch2/catch.hpp>

#include <atomic>
#include <future>
#include <set>
#include <thread>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

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
  // The web page is served from the binary.
  res = c.Get("/");
  REQUIRE(res);
  CHECK_THAT(res->body, Catch::Contains("/api/status"));

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
