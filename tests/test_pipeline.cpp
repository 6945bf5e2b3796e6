// Pipeline schedules as data: every generator's lists pass the checker for many shapes; the
// checker's measurements match the known formulas and promises; broken lists are caught with
// a message naming the fault; the timeline and the Chrome trace show what was simulated.
#include <nlohmann/json.hpp>
#include <catch2/catch.hpp>

#include <algorithm>
#include <fstream>
#include <sstream>

#include "parallel/pipeline_render.h"
#include "parallel/pipeline_split.h"
#include "test_support.h"

using namespace troupe::parallel::pp;

namespace {

Timeline checked(const std::string& name, int p, int m, int v = 0) {
  INFO(name << " p=" << p << " m=" << m << " v=" << v);
  const auto s = make_schedule(name, p, m, v);
  return check(s);
}

std::vector<Action>::iterator find_action(Schedule& s, int rank, Op op, int stage, int mb) {
  auto& a = s.actions[rank];
  return std::find_if(a.begin(), a.end(),
                      [&](const Action& x) { return x.op == op && x.stage == stage && x.microbatch == mb; });
}

}  // namespace

TEST_CASE("every schedule passes the checker over many shapes", "[pipeline]") {
  for (const auto& name : schedule_names())
    for (int p : {1, 2, 3, 4, 8})
      for (int m : {1, 2, 3, 4, 5, 8, 12, 16}) {
        if (name == "Interleaved1F1B" && m % p != 0) {
          CHECK_THROWS_AS(make_schedule(name, p, m), ScheduleError);
          continue;
        }
        for (int v : is_interleaved(name) && name != "ZBVZeroBubble" ? std::vector<int>{2, 3} : std::vector<int>{0}) {
          INFO(name << " p=" << p << " m=" << m << " v=" << v);
          const auto s = make_schedule(name, p, m, v);
          CHECK(s.stages() == p * (v == 0 ? (name == "ZBVZeroBubble" ? 2 : 1) : v));
          CHECK_NOTHROW(check(s));
        }
      }
}

TEST_CASE("GPipe and 1F1B: bubble (p-1)/(m+p-1) and their activation promises", "[pipeline]") {
  for (int p : {2, 3, 4, 8})
    for (int m : {1, 4, 8, 13}) {
      INFO("p=" << p << " m=" << m);
      for (const Costs& costs : {Costs{1, 2, 1, 1}, Costs{1, 1, 1, 1}, Costs{2, 3, 1, 1}}) {
        const auto gpipe = check(make_schedule("GPipe", p, m), costs);
        const auto ofob = check(make_schedule("1F1B", p, m), costs);
        CHECK(gpipe.bubble() == Approx(one_f_one_b_bubble(p, m)));
        CHECK(ofob.bubble() == Approx(one_f_one_b_bubble(p, m)));
      }
      const auto gpipe = checked("GPipe", p, m), ofob = checked("1F1B", p, m);
      for (int r = 0; r < p; ++r) {
        CHECK(gpipe.peak_in_flight[r] == m);               // every micro-batch's activations at once
        CHECK(ofob.peak_in_flight[r] == std::min(m, p - r));  // at most p - r
      }
    }
}

TEST_CASE("interleaved and zero-bubble schedules: fewer bubbles, bounded activations", "[pipeline]") {
  for (int p : {2, 4}) {
    const int m = 2 * p;
    const double ofob = one_f_one_b_bubble(p, m);
    for (int v : {2, 3}) {
      const auto t = checked("Interleaved1F1B", p, m, v);
      CHECK(t.bubble() < ofob);
      // Megatron's warm-up: 2 (p - 1 - r) + (v - 1) p forwards ahead, then one more in flight.
      for (int r = 0; r < p; ++r) CHECK(t.peak_in_flight[r] == std::min(m * v, 2 * (p - 1 - r) + (v - 1) * p + 1));
    }
    const Costs split{1, 2, 1, 1};  // B = I + W: the same work as the 1F1B figure above
    const auto zbv = check(make_schedule("ZBVZeroBubble", p, m), split);
    CHECK(zbv.bubble() < ofob / 2);
    for (int r = 0; r < p; ++r) CHECK(zbv.peak_in_flight[r] <= 2 * p);  // half-size stages: 1F1B's memory
    const auto izb = check(make_schedule("InterleavedZeroBubble", p, m, 2), split);
    CHECK(izb.bubble() < checked("Interleaved1F1B", p, m, 2).bubble());
    for (int r = 0; r < p; ++r) CHECK(izb.peak_in_flight[r] <= 2 * p);
  }
  // Many micro-batches: the zero-bubble schedules approach no bubble at all.
  CHECK(check(make_schedule("ZBVZeroBubble", 4, 32)).bubble() < 0.03);
}

TEST_CASE("the checker names what is wrong with a schedule", "[pipeline]") {
  SECTION("a backward before its forward") {
    auto s = make_schedule("GPipe", 2, 2);
    auto& a = s.actions[0];
    auto f = find_action(s, 0, Op::forward, 0, 1), b = find_action(s, 0, Op::backward, 0, 1);
    std::iter_swap(f, b);
    CHECK_THROWS_WITH(check(s), Catch::Contains("B0.1 out of order") && Catch::Contains("expected F"));
    (void)a;
  }
  SECTION("a missing transfer") {
    auto s = make_schedule("1F1B", 2, 2);
    s.actions[0].erase(find_action(s, 0, Op::send_forward, 1, 1));
    CHECK_THROWS_WITH(check(s), Catch::Contains("rank 0 never posts sendF1.1>1"));
  }
  SECTION("transfers posted in different orders by the two ranks") {
    auto s = make_schedule("GPipe", 2, 3);
    auto x = find_action(s, 0, Op::send_forward, 1, 0), y = find_action(s, 0, Op::send_forward, 1, 1);
    std::iter_swap(x, y);
    // Rank 0 now sends micro-batch 1 first, before its forward exists: caught either way.
    CHECK_THROWS_AS(check(s), ScheduleError);
    auto t = make_schedule("GPipe", 2, 3);
    auto r0 = find_action(t, 1, Op::recv_forward, 1, 0), r1 = find_action(t, 1, Op::recv_forward, 1, 1);
    std::iter_swap(r0, r1);
    CHECK_THROWS_WITH(check(t), Catch::Contains("transfers out of order"));
  }
  SECTION("a receive posted after the compute that needs it deadlocks") {
    auto s = make_schedule("1F1B", 2, 2);
    auto recv = find_action(s, 1, Op::recv_forward, 1, 0);
    const auto moved = *recv;
    s.actions[1].erase(recv);
    s.actions[1].push_back(moved);
    CHECK_THROWS_WITH(check(s), Catch::Contains("deadlocks") && Catch::Contains("F1.0 waiting for recvF1.0<0"));
  }
  SECTION("a compute on the wrong rank, a stage never run") {
    auto s = make_schedule("GPipe", 2, 1);
    s.actions[0].push_back({Op::forward, 1, 0, -1});
    CHECK_THROWS_WITH(check(s), Catch::Contains("stage 1 runs on rank 1"));
    auto t = make_schedule("GPipe", 2, 1);
    t.actions[1].erase(find_action(t, 1, Op::backward, 1, 0));
    CHECK_THROWS_WITH(check(t), Catch::Contains("never runs B1.0"));
  }
  CHECK_THROWS_WITH(make_schedule("2F2B", 2, 2), Catch::Contains("unknown pipeline schedule '2F2B'"));
  CHECK_THROWS_WITH(make_schedule("Interleaved1F1B", 4, 6), Catch::Contains("multiple of the pipeline degree"));
  CHECK_THROWS_WITH(make_schedule("1F1B", 2, 4, 2), Catch::Contains("one stage per rank"));
}

TEST_CASE("schedules render as a timeline and a Chrome trace", "[pipeline]") {
  const auto s = make_schedule("1F1B", 2, 3);
  const auto t = check(s);
  const auto text = render_timeline(s, t);
  CHECK_THAT(text, Catch::Contains("rank 0 |F0 F1 .  .  B0 -  F2 B1 -  .  B2 -"));
  CHECK_THAT(text, Catch::Contains("rank 1 |.  F0 B0 -  F1 B1 -  F2 B2 -  .  "));
  CHECK_THAT(text, Catch::Contains("bubble 25.0% (formula (p-1)/(m+p-1): 25.0%)"));
  const auto trace = nlohmann::json::parse(chrome_trace(t, 1000, "1F1B"));
  int computes = 0, transfers = 0;
  for (const auto& e : trace["traceEvents"]) {
    if (e["ph"] == "X") {
      ++computes;
      CHECK(e["dur"].get<double>() >= 1000);
    }
    if (e["ph"] == "i") ++transfers;
  }
  CHECK(computes == 2 * 2 * 3);   // F and B of 3 micro-batches on 2 ranks
  CHECK(transfers == 4 * 3);      // send and receive of each activation and each gradient
}

TEST_CASE("stage splits: even, by layers per stage, by split points, and impossible ones", "[pipeline]") {
  auto even = split_stages(6, 2, 4, -1, {});
  CHECK(even.first_block == std::vector<int64_t>{0, 2, 4, 5, 6});  // earlier stages take the remainder
  CHECK(even.units_of(0) == std::pair<int64_t, int64_t>{0, 3});   // the embedding and blocks 0, 1
  CHECK(even.units_of(3) == std::pair<int64_t, int64_t>{6, 8});   // block 5 and the head
  CHECK(split_stages(6, 3, 3, 2, {}).first_block == std::vector<int64_t>{0, 2, 4, 6});
  CHECK(split_stages(6, 2, 2, -1, {"layers.1"}).first_block == std::vector<int64_t>{0, 1, 6});
  CHECK_THROWS_WITH(split_stages(6, 2, 2, -1, {"layers.6"}), Catch::Contains("'layers.6' leaves a stage without blocks"));
  CHECK_THROWS_WITH(split_stages(6, 4, 8, -1, {}), Catch::Contains("8 pipeline stages need as many blocks"));
  CHECK_THROWS_WITH(split_stages(6, 2, 2, 2, {}), Catch::Contains("3 pipeline stages do not spread evenly over pipeline_parallel_degree 2"));
  CHECK_THROWS_WITH(split_stages(6, 2, 2, 2, {"layers.3"}), Catch::Contains("not both"));
}

TEST_CASE("troupe schedule prints the timeline and writes the trace; a bad schedule exits 2", "[cli]") {
  troupe::testing::TempDir dir;
  const auto out = dir.file("out.txt"), err = dir.file("err.txt"), trace = dir.file("s.json");
  const auto bin = troupe::testing::troupe_binary();
  REQUIRE(troupe::testing::run_command(bin + " schedule --pp 4 --microbatches 8 --schedule Interleaved1F1B "
                                             "--virtual-stages 2 --actions --trace " + trace + " > " + out) == 0);
  std::stringstream text;
  text << std::ifstream(out).rdbuf();
  CHECK_THAT(text.str(), Catch::Contains("Interleaved1F1B: 4 ranks, 8 stages, 8 micro-batches") &&
                             Catch::Contains("rank 3 |") && Catch::Contains("bubble 15.8%") &&
                             Catch::Contains("rank 0: F0.0 sendF1.0>1 F0.1"));
  std::ifstream t(trace);
  CHECK(nlohmann::json::parse(t)["traceEvents"].size() > 100);
  CHECK(troupe::testing::run_command(bin + " schedule --pp 4 --microbatches 6 --schedule Interleaved1F1B 2> " + err) == 2);
  std::stringstream e;
  e << std::ifstream(err).rdbuf();
  CHECK_THAT(e.str(), Catch::Contains("multiple of the pipeline degree"));
}
