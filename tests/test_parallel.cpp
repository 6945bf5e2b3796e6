// Many ranks on the CPU: the device mesh, the Gloo communicator against locally computed
// references, and data parallelism (FSDP, DDP, HSDP) against one rank: the same losses and the
// same final parameters, and checkpoints saved by one layout resumed by another. FSDP over a
// one-rank group against the plain model, on the CPU (Gloo) and on one GPU (NCCL, [gpu]).
#include <ATen/ATen.h>
#include <torch/torch.h>
#include <httplib.h>
#include <nlohmann/json.hpp>
#include <catch2/catch.hpp>

#include <csignal>
#include <cstdlib>
#include <fstream>
#include <future>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include <sys/wait.h>
#include <unistd.h>

#ifdef TROUPE_WITH_CUDA
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/Sleep.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include "checkpoint/checkpoint_folder.h"
#include "checkpoint/checkpoint_metadata.h"
#include "checkpoint/shard_file.h"
#include "train/trainer_checkpoint.h"
#include "comm/flight_record_report.h"
#include "comm/flight_recorder.h"
#include "comm/gloo_communicator.h"
#include "comm/nccl_communicator.h"
#include "comm/rendezvous.h"
#include "comm/replica_communicator.h"
#include "data/batch.h"
#include "data/dataset_files.h"
#include "data/shard_preparer.h"
#include "data/token_shards.h"
#include "kernels/float8.h"
#include "kernels/float8_linear.h"
#include "kernels/gradient_sink.h"
#include "kernels/weight_copies.h"
#include "models/common/moe.h"
#include "models/model.h"
#include "models/rank_group.h"
#include "models/registry.h"
#include "parallel/device_mesh.h"
#include "parallel/fsdp.h"
#include "parallel/grad_norm.h"
#include "parallel/parallelize.h"
#include "parallel/placement.h"
#include "parallel/rank_group.h"
#include "parallel/pipeline_schedule.h"
#include "runtime/crash_report.h"
#include "runtime/exit_codes.h"
#include "runtime/node_placement.h"
#include "train/adamw.h"
#include "train/job_model.h"
#include "train/trainer.h"
#include "parallel/unit_executor.h"
#include "parallel_jobs.h"
#include "test_support.h"

using namespace troupe;
using namespace troupe::testing;
using parallel::MeshDim;

namespace {

parallel::ParallelDims dims_of(int64_t replicate, int64_t shard, int64_t world) {
  config::ParallelismSection p;
  p.data_parallel_replicate_degree = replicate;
  p.data_parallel_shard_degree = shard;
  return parallel::ParallelDims::resolve(p, world);
}

// Catch2 v2's assertions are not thread-safe (its run context's state is shared): rank threads
// make theirs one at a time. Unserialised assertions from rank threads corrupted the heap.
std::mutex& assertion_mutex() {
  static std::mutex m;
  return m;
}
#define RANK_ASSERT(MACRO, ...)                                     \
  do {                                                              \
    std::lock_guard<std::mutex> rank_assertion_lock(assertion_mutex()); \
    MACRO(__VA_ARGS__);                                             \
  } while (false)
#define RANK_CHECK(...) RANK_ASSERT(CHECK, __VA_ARGS__)
#define RANK_REQUIRE(...) RANK_ASSERT(REQUIRE, __VA_ARGS__)
#define RANK_CHECK_THROWS_WITH(...) RANK_ASSERT(CHECK_THROWS_WITH, __VA_ARGS__)

// Runs body(rank, communicator) on `n` threads, one Gloo rank each, and rethrows the first failure.
// The bodies assert with the RANK_ macros above.
template <class Body>
void on_ranks(int n, Body body, std::chrono::milliseconds timeout = std::chrono::seconds(30)) {
  auto rdzv = comm::Rendezvous::in_process(timeout);
  std::vector<std::future<void>> done;
  for (int r = 0; r < n; ++r)
    done.push_back(std::async(std::launch::async, [&, r] { body(r, comm::make_gloo_communicator(*rdzv, "test", r, n)); }));
  for (auto& f : done) f.get();
}

}  // namespace

TEST_CASE("device mesh: coordinates, groups and names in torchtitan's order", "[parallel]") {
  const auto dims = dims_of(2, -1, 8);  // dp_shard fills: 4
  CHECK(dims.of(MeshDim::dp_shard) == 4);
  CHECK(dims.dp() == 8);
  const parallel::DeviceMesh mesh(dims, 5);
  CHECK(mesh.coord(MeshDim::dp_replicate) == 1);
  CHECK(mesh.coord(MeshDim::dp_shard) == 1);
  CHECK(mesh.group({MeshDim::dp_shard}) == std::vector<int>{4, 5, 6, 7});
  CHECK(mesh.group({MeshDim::dp_replicate}) == std::vector<int>{1, 5});
  CHECK(mesh.group({MeshDim::dp_replicate, MeshDim::dp_shard}).size() == 8);
  CHECK(mesh.rank_in({MeshDim::dp_shard}) == 1);
  CHECK(mesh.rank_in({MeshDim::dp_replicate, MeshDim::dp_shard}) == 5);
  CHECK(mesh.group_name({MeshDim::dp_shard}) == "dp_shard[pp0,dp_replicate1,cp0,tp0]");
  // Every rank of a group computes the same name.
  CHECK(parallel::DeviceMesh(dims, 7).group_name({MeshDim::dp_shard}) == mesh.group_name({MeshDim::dp_shard}));
  CHECK(parallel::DeviceMesh(dims, 1).group_name({MeshDim::dp_shard}) != mesh.group_name({MeshDim::dp_shard}));
  CHECK(mesh.coordinates() == "dp_replicate 1/2, dp_shard 1/4");
  config::ParallelismSection p;
  p.tensor_parallel_degree = 2;
  p.pipeline_parallel_degree = 2;
  const parallel::DeviceMesh tp_mesh(parallel::ParallelDims::resolve(p, 8), 7);  // tp varies fastest
  CHECK(tp_mesh.coordinates() == "pp 1/2, dp_shard 1/2, tp 1/2");
  CHECK(tp_mesh.group({MeshDim::tp}) == std::vector<int>{6, 7});
  CHECK(parallel::DeviceMesh(parallel::ParallelDims::resolve({}, 1), 0).coordinates() == "one rank");

  // Expert parallelism borrows dp_shard x cp: ep the fastest-varying factor, efsdp the rest.
  config::ParallelismSection e;
  e.data_parallel_replicate_degree = 2;
  e.context_parallel_degree = 2;
  e.expert_parallel_degree = 4;
  const auto ep_dims = parallel::ParallelDims::resolve(e, 16);  // dp_shard 4 x cp 2 = efsdp 2 x ep 4
  CHECK(ep_dims.of(MeshDim::efsdp) == 2);
  const parallel::DeviceMesh ep_mesh(ep_dims, 13);  // dp_replicate 1, dp_shard 2, cp 1: place 5 of 8
  CHECK(ep_mesh.coord(MeshDim::ep) == 1);
  CHECK(ep_mesh.coord(MeshDim::efsdp) == 1);
  CHECK(ep_mesh.group({MeshDim::ep}) == std::vector<int>{12, 13, 14, 15});
  CHECK(ep_mesh.group({MeshDim::efsdp}) == std::vector<int>{9, 13});
  CHECK(ep_mesh.rank_in({MeshDim::ep}) == 1);
  CHECK(ep_mesh.group_name({MeshDim::ep}) == "ep[pp0,dp_replicate1,efsdp1]");
  CHECK(parallel::DeviceMesh(ep_dims, 15).group_name({MeshDim::ep}) == ep_mesh.group_name({MeshDim::ep}));
  CHECK(parallel::DeviceMesh(ep_dims, 9).group_name({MeshDim::efsdp}) == ep_mesh.group_name({MeshDim::efsdp}));
  CHECK(ep_mesh.coordinates() == "dp_replicate 1/2, dp_shard 2/4, cp 1/2, ep 1/4");
  // An expert's piece split over ep and efsdp is saved by the first replica only.
  const auto expert = parallel::Placement::whole({8, 4, 4}).split(MeshDim::ep, 0, 1, 4).split(MeshDim::efsdp, 0, 1, 2);
  CHECK(expert.box().offsets == std::vector<int64_t>{3, 0, 0});
  CHECK(!expert.saved_by(ep_mesh));
  CHECK(expert.saved_by(parallel::DeviceMesh(ep_dims, 5)));
}

TEST_CASE("parallel degrees are checked against the world size", "[parallel]") {
  CHECK_THROWS_WITH(dims_of(3, -1, 8), Catch::Contains("does not divide the world size 8"));
  CHECK_THROWS_WITH(dims_of(2, 2, 8), Catch::Contains("but the world has 8 ranks"));
  CHECK(dims_of(1, -1, 1).world() == 1);
  CHECK_THROWS_WITH(parallel::DeviceMesh(dims_of(1, 2, 2), 2), Catch::Contains("outside a world of 2"));
  config::ParallelismSection e;
  e.expert_parallel_degree = 3;
  CHECK_THROWS_WITH(parallel::ParallelDims::resolve(e, 4),
                    Catch::Contains("parallelism.expert_parallel_degree 3 does not divide") && Catch::Contains("= 4"));
}

TEST_CASE("gloo communicator: collectives and transfers match local references", "[parallel]") {
  // libtorch's flight recorder races on its map when in-process ranks issue at once: off by default.
  REQUIRE(std::getenv("TORCH_FR_BUFFER_SIZE") != nullptr);
  CHECK(std::string(std::getenv("TORCH_FR_BUFFER_SIZE")) == "0");
  constexpr int n = 4;
  on_ranks(n, [&](int r, comm::CommunicatorPtr c) {
    RANK_REQUIRE(c->rank() == r);
    RANK_REQUIRE(c->size() == n);
    // Each rank's input: fixed random values seeded by its rank, so every rank knows them all.
    auto input_of = [](int k) { return at::randn({8}, at::TensorOptions().dtype(at::kDouble)).mul_(0).add_(at::arange(8, at::kDouble) * (k + 1) + 0.25 * k); };
    auto all = at::stack({input_of(0), input_of(1), input_of(2), input_of(3)});

    auto gathered = at::empty({n * 8}, at::kDouble);
    c->all_gather(gathered, input_of(r))->wait();
    RANK_CHECK(at::equal(gathered, all.flatten()));
    // Grouped, as FSDP gathers a unit: inputs of two lengths into their places in one buffer.
    const auto in = input_of(r);
    auto places = at::full({n * 8}, -1.0, at::kDouble);
    c->all_gather({places.narrow(0, 0, n * 3), places.narrow(0, n * 3, n * 5)}, {in.narrow(0, 0, 3), in.narrow(0, 3, 5)})
        ->wait();
    RANK_CHECK(at::equal(places.narrow(0, 0, n * 3).view({n, 3}), all.narrow(1, 0, 3)));
    RANK_CHECK(at::equal(places.narrow(0, n * 3, n * 5).view({n, 5}), all.narrow(1, 3, 5)));
    // Grouped reduce-scatters from two places of one buffer (FSDP's gradients), averaged.
    const auto grads = at::arange(n * 8, at::kDouble).mul_(r + 1);
    auto pieces = at::full({8}, -1.0, at::kDouble);
    c->reduce_scatter({pieces.narrow(0, 0, 3), pieces.narrow(0, 3, 5)}, {grads.narrow(0, 0, n * 3), grads.narrow(0, n * 3, n * 5)},
                      comm::ReduceOp::avg)
        ->wait();
    const auto mean = at::arange(n * 8, at::kDouble).mul_((n + 1) / 2.0);  // the average of (k + 1) x
    RANK_CHECK(at::allclose(pieces.narrow(0, 0, 3), mean.narrow(0, 3 * r, 3)));
    RANK_CHECK(at::allclose(pieces.narrow(0, 3, 5), mean.narrow(0, n * 3 + 5 * r, 5)));

    auto part = at::empty({2}, at::kDouble);
    c->reduce_scatter(part, input_of(r).clone(), comm::ReduceOp::sum)->wait();
    RANK_CHECK(at::allclose(part, all.sum(0).narrow(0, 2 * r, 2)));
    c->reduce_scatter(part, input_of(r).clone(), comm::ReduceOp::avg)->wait();
    RANK_CHECK(at::allclose(part, all.mean(0).narrow(0, 2 * r, 2)));

    auto t = input_of(r).clone();
    c->all_reduce(t, comm::ReduceOp::max)->wait();
    RANK_CHECK(at::equal(t, std::get<0>(all.max(0))));
    t = input_of(r).clone();
    c->all_reduce(t, comm::ReduceOp::avg)->wait();
    RANK_CHECK(at::allclose(t, all.mean(0)));

    t = input_of(r).clone();
    c->broadcast(t, 2)->wait();
    RANK_CHECK(at::equal(t, input_of(2)));

    // A ring: send to the next rank, receive from the previous one.
    auto received = at::empty({8}, at::kDouble);
    auto sent = c->send(input_of(r), (r + 1) % n);
    c->recv(received, (r + n - 1) % n)->wait();
    sent->wait();
    RANK_CHECK(at::equal(received, input_of((r + n - 1) % n)));

    // All-to-all of rows (expert parallelism's dispatch): rank r sends (r + d) % 3 rows to rank
    // d, rows of [r, d, row] over a 2-wide row, and some ranks none at all.
    auto rows_to = [](int from, int to) -> int64_t { return (from + to) % 3; };
    std::vector<int64_t> send, recv;
    std::vector<at::Tensor> parts, expected;
    for (int d = 0; d < n; ++d) {
      send.push_back(rows_to(r, d));
      recv.push_back(rows_to(d, r));
      for (int64_t k = 0; k < rows_to(r, d); ++k) parts.push_back(at::tensor({double(r), double(d * 10 + k)}, at::kDouble));
      for (int64_t k = 0; k < rows_to(d, r); ++k) expected.push_back(at::tensor({double(d), double(r * 10 + k)}, at::kDouble));
    }
    auto rows_in = at::stack(parts);
    auto rows_out = at::empty({static_cast<int64_t>(expected.size()), 2}, at::kDouble);
    c->all_to_all(rows_out, recv, rows_in, send)->wait();
    RANK_CHECK(at::equal(rows_out, at::stack(expected)));
    RANK_CHECK_THROWS_WITH(c->all_to_all(rows_out, recv, rows_in, std::vector<int64_t>(n, 5)),
                      Catch::Contains("all_to_all") && Catch::Contains("rows differ from the counts"));
    c->barrier();
  });
}

TEST_CASE("replica communicator: rank 0's results of a Gloo group whose ranks all hold the same tensors",
          "[parallel]") {
  constexpr int n = 3;
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  const auto whole = at::arange(2 * n, f64).mul_(0.5).add_(1.0);  // reduced, rank 0 keeps 2
  const auto longer = at::arange(3 * n, f64).neg_();
  const auto part = at::arange(4, f64).add_(7.0), other = at::arange(2, f64).add_(-3.0);
  // Every collective of one kind on fresh outputs: one group's, then the replicas'.
  auto run = [&](comm::Communicator& c) {
    std::vector<at::Tensor> out;
    auto sum = at::empty({2}, f64), avg = at::empty({2}, f64), longer_avg = at::empty({3}, f64);
    c.reduce_scatter(sum, whole.clone(), comm::ReduceOp::sum)->wait();
    c.reduce_scatter({avg, longer_avg}, {whole.clone(), longer.clone()}, comm::ReduceOp::avg)->wait();
    auto gathered = at::empty({n * 4}, f64), gathered_other = at::empty({n * 2}, f64);
    c.all_gather(gathered, part.clone())->wait();
    auto grouped = at::empty({n * 4}, f64);
    c.all_gather({grouped, gathered_other}, {part.clone(), other.clone()})->wait();
    auto total = whole.clone(), largest = longer.clone(), mean = part.clone();
    c.all_reduce(total, comm::ReduceOp::sum)->wait();
    c.all_reduce(largest, comm::ReduceOp::max)->wait();
    c.all_reduce(mean, comm::ReduceOp::avg)->wait();
    auto sent = other.clone();
    c.broadcast(sent, 0)->wait();
    return std::vector<at::Tensor>{sum, avg, longer_avg, gathered, grouped, gathered_other, total, largest, mean, sent};
  };
  std::vector<at::Tensor> group_results;
  on_ranks(n, [&](int r, comm::CommunicatorPtr c) {
    auto mine = run(*c);
    if (r == 0) group_results = std::move(mine);
  });
  const auto replicas = comm::make_replica_communicator("replicas", n, -1);
  CHECK(replicas->rank() == 0);
  CHECK(replicas->size() == n);
  const auto replica_results = run(*replicas);
  REQUIRE(replica_results.size() == group_results.size());
  for (size_t k = 0; k < group_results.size(); ++k) {
    INFO("result " << k);
    CHECK(torch::equal(replica_results[k], group_results[k]));
  }
  CHECK_THROWS_WITH(replicas->send(part, 1), Catch::Contains("replicas") && Catch::Contains("send to rank 1"));
  // An all-to-all's replicas each send rank 0 what this rank sends it: rank 0's share n times.
  const auto rows = at::arange(12, f64).view({6, 2});
  auto got = at::empty({3 * n, 2}, f64);
  replicas->all_to_all(got, {3, 3, 3}, rows, {3, 1, 2})->wait();
  CHECK(at::equal(got, rows.narrow(0, 0, 3).repeat({n, 1})));
  // Counts no replicas could send: the shapes of the exchange, rows of `in` from the start.
  auto uneven = at::empty({4, 2}, f64);
  replicas->all_to_all(uneven, {1, 0, 3}, rows.narrow(0, 0, 2), {2, 0, 0})->wait();
  CHECK(at::equal(uneven, at::cat({rows.narrow(0, 0, 1), rows.narrow(0, 0, 2), rows.narrow(0, 0, 1)})));
  auto wrong = at::empty({5}, f64);
  CHECK_THROWS_WITH(replicas->all_gather(wrong, part), Catch::Contains("size x its part"));
}

TEST_CASE("gloo communicator: a peer that never arrives ends the wait with an error, recorded as failed",
          "[parallel]") {
  auto rdzv = comm::Rendezvous::in_process(std::chrono::seconds(20));
  rdzv->set_operation_timeout(std::chrono::milliseconds(1500));
  auto recorder = std::make_shared<comm::FlightRecorder>(8);
  std::promise<void> finished;
  auto late = std::async(std::launch::async, [&] {
    auto c = comm::make_gloo_communicator(*rdzv, "timeout", 1, 2);
    c->all_reduce(at::ones({4}), comm::ReduceOp::sum)->wait();  // once, then silent: a stuck or dead peer
    finished.get_future().wait();
  });
  auto c = comm::make_gloo_communicator(*rdzv, "timeout", 0, 2, recorder);
  auto t = at::ones({4});
  c->all_reduce(t, comm::ReduceOp::sum)->wait();
  CHECK(t.sum().item<float>() == 8);
  const auto start = std::chrono::steady_clock::now();
  CHECK_THROWS_AS(c->all_reduce(t, comm::ReduceOp::sum)->wait(), comm::CommError);
  const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  CHECK(waited < 10);
  finished.set_value();
  late.get();
  const auto entries = recorder->entries();
  REQUIRE(entries.size() == 2);
  const auto groups = recorder->groups();
  REQUIRE(groups.size() == 1);
  CHECK(groups[0].name == "timeout");
  CHECK(groups[0].rank == 0);
  CHECK(groups[0].size == 2);
  CHECK(groups[0].issued == 2);
  CHECK(entries[0].seq == 1);
  CHECK(entries[0].group == "timeout");
  CHECK(entries[0].op == "all_reduce");
  CHECK(entries[0].elements == 4);
  CHECK(entries[0].dtype == "Float");
  CHECK_FALSE(entries[0].failed);
  CHECK(entries[0].ended >= entries[0].issued);
  CHECK(entries[1].seq == 2);
  CHECK(entries[1].failed);
  CHECK_THAT(recorder->summary(std::chrono::system_clock::now()), Catch::StartsWith("all_reduce #2 of timeout in step 0, failed after 1"));
}

// The exposed-communication count: host waits at once, device stalls once the device has passed
// them (here stand-ins that report a stall only when told it has passed), each counted once.
TEST_CASE("flight recorder: exposed communication adds host waits and device stalls as they pass", "[parallel]") {
  comm::FlightRecorder recorder(4);
  recorder.add_wait(std::chrono::milliseconds(250));
  CHECK(recorder.waited_seconds() == Approx(0.25));
  CHECK(recorder.host_waited_seconds() == Approx(0.25));
  std::atomic<int> passed{0};
  std::atomic<int> asked{0};
  recorder.add_device_wait([&] { return ++asked, passed >= 1 ? 0.5 : -1.0; });
  recorder.add_device_wait([&] { return ++asked, passed >= 2 ? 0.125 : -1.0; });
  CHECK(recorder.waited_seconds() == Approx(0.25));  // neither passed yet
  passed = 1;
  CHECK(recorder.waited_seconds() == Approx(0.75));
  CHECK(recorder.waited_seconds() == Approx(0.75));  // counted once, not again
  passed = 2;
  CHECK(recorder.waited_seconds() == Approx(0.875));
  CHECK(recorder.host_waited_seconds() == Approx(0.25));  // the optimizer's span counts host waits alone
  const int asked_before = asked;
  CHECK(recorder.waited_seconds() == Approx(0.875));
  CHECK(asked == asked_before);  // a passed stall is dropped, not asked again
  // Unread, the passed stalls still leave the list once it grows long.
  for (int i = 0; i < 2000; ++i) recorder.add_device_wait([] { return 0.001; });
  CHECK(recorder.host_waited_seconds() == Approx(0.25));
  CHECK(recorder.waited_seconds() == Approx(2.875));
}

TEST_CASE("flight recorder: numbers per group, a bounded ring, the oldest unfinished, and its file", "[parallel]") {
  comm::FlightRecorder r(3);
  const auto t0 = std::chrono::system_clock::now();
  CHECK(r.summary(t0).empty());
  const auto a = r.issued("dp_shard", "all_gather", 10, "BFloat16");
  const auto b = r.issued("dp_replicate", "all_reduce", 4, "Float");
  const auto c = r.issued("dp_shard", "reduce_scatter", 20, "Float");
  r.ended(b);
  CHECK_THAT(r.summary(t0 + std::chrono::seconds(42)), Catch::StartsWith("all_gather #1 of dp_shard in step 0, unfinished for 4"));
  r.ended(a);
  CHECK_THAT(r.summary(t0), Catch::StartsWith("reduce_scatter #2 of dp_shard in step 0, unfinished"));
  r.ended(c);
  CHECK(r.summary(t0) == "last: reduce_scatter #2 of dp_shard in step 0, finished");
  // A fourth, in step 5, pushes out the first; ending a dropped id changes nothing.
  r.set_step(5);
  const auto d = r.issued("dp_replicate", "all_reduce", 4, "Float");
  r.ended(a, /*failed=*/true);
  auto entries = r.entries();
  REQUIRE(entries.size() == 3);
  CHECK(entries.front().id == b);
  CHECK(entries.back().id == d);
  CHECK(entries.back().seq == 2);
  CHECK(entries.back().step == 5);
  CHECK(entries.front().step == 0);
  CHECK(entries.back().ended.time_since_epoch().count() == 0);

  TempDir dir;
  const auto path = dir.file("traces/rank_3.json");
  comm::write_flight_record(r, 3, path);
  const auto json = nlohmann::json::parse(std::ifstream(path));
  CHECK(json["rank"] == 3);
  CHECK(json["capacity"] == 3);
  REQUIRE(json["entries"].size() == 3);
  CHECK(json["entries"][0]["state"] == "finished");
  CHECK(json["entries"][1]["op"] == "reduce_scatter");
  CHECK(json["entries"][1]["seq"] == 2);
  CHECK(json["entries"][2]["state"] == "issued");
  CHECK(json["entries"][2]["step"] == 5);
  CHECK(json["entries"][2]["ended_unix_s"].is_null());
  CHECK(json["entries"][2]["issued_unix_s"].get<double>() > 1.7e9);
  // Groups used without joining them are listed by name, with their counts (the ring dropped #1).
  REQUIRE(json["groups"].size() == 2);
  CHECK(json["groups"][0]["group"] == "dp_shard");
  CHECK(json["groups"][0]["issued"] == 2);
  CHECK(json["groups"][0]["rank"] == -1);
  CHECK(json["groups"][1]["group"] == "dp_replicate");
  CHECK(json["groups"][1]["issued"] == 2);
}

TEST_CASE("flight records side by side: who is behind, the first mismatched collective, transfers left alone",
          "[parallel]") {
  TempDir dir;
  const auto folder = dir.file("traces");
  CHECK_THROWS_WITH(comm::flight_record_report(dir.file("")), Catch::Contains("holds no flight records"));
  // Ranks 0 and 2 reached #3 of dp_shard; rank 1 issued only #1 and #2, and its #2 differs. All
  // three did dp_replicate's one all-reduce. Of cp (3 ranks) only ranks 0 and 1 have a record; of
  // tp (4 ranks), rank 3 joined and issued nothing; rank 4 never connected anything.
  const std::vector<std::vector<std::string>> ops{{"all_gather", "all_gather", "reduce_scatter"},
                                                  {"all_gather", "all_reduce"},
                                                  {"all_gather", "all_gather", "reduce_scatter"}};
  for (int rank = 0; rank < 5; ++rank) {
    comm::FlightRecorder r(16);
    if (rank < 3) {
      for (const auto& op : ops[rank]) r.ended(r.issued("dp_shard", op, 8, "Float"));
      r.ended(r.issued("dp_replicate", "all_reduce", 2, "Float"));
      r.issued("pp", rank == 0 ? "send to rank 1" : "recv from rank 0", 4, "BFloat16");
    }
    if (rank < 2) {
      r.joined("cp", rank, 3);
      r.ended(r.issued("cp", "all_reduce", 2, "Float"));
    }
    if (rank < 4) {
      r.joined("tp", rank, 4);
      if (rank < 3) r.ended(r.issued("tp", "all_reduce", 2, "Float"));
    }
    comm::write_flight_record(r, rank, folder + "/rank_" + std::to_string(rank) + ".json");
  }
  const auto report = comm::flight_record_report(folder);
  INFO(report);
  CHECK_THAT(report, Catch::Contains("5 ranks' records in " + folder));
  CHECK_THAT(report, Catch::Contains("rank 4: in no group yet"));
  CHECK_THAT(report, !Catch::Contains("rank 3: in no group"));
  CHECK_THAT(report, Catch::Contains("dp_shard (ranks 0 1 2):"));
  CHECK_THAT(report, Catch::Contains("rank 1: issued up to #2 (all_reduce in step 0, finished), finished up to #2"));
  CHECK_THAT(report, Catch::Contains("behind: rank 1 (issued up to #2; others reached #3)"));
  CHECK_THAT(report, Catch::Contains("mismatch at #2: rank 0 all_gather of 8 Float elements, rank 1 all_reduce of 8 "
                                     "Float elements"));
  CHECK_THAT(report, Catch::Contains("rank 0: issued up to #1 (send to rank 1 in step 0, issued), finished up to #0"));
  CHECK_THAT(report, Catch::Contains("point-to-point transfers: their numbers need not line up"));
  CHECK_THAT(report, Catch::Contains("dp_replicate (ranks 0 1 2):\n  rank 0: issued up to #1"));
  CHECK_THAT(report, Catch::Contains("together: every rank issued up to #1"));
  CHECK_THAT(report, Catch::Contains("cp (ranks 0 1 of 3):"));
  CHECK_THAT(report, Catch::Contains("missing: 1 of its 3 ranks have no record of it here"));
  CHECK_THAT(report, Catch::Contains("tp (ranks 0 1 2 3 of 4):"));
  CHECK_THAT(report, Catch::Contains("rank 3: joined, issued nothing yet"));
  CHECK_THAT(report, Catch::Contains("behind: rank 3 (issued up to #0; others reached #1)"));
  std::ofstream(folder + "/rank_9.json") << "{\"rank\": 9}";
  CHECK_THROWS_WITH(comm::flight_record_report(folder), Catch::Contains("rank_9.json is not a flight record"));
}

namespace {

// Parameters whose rows do not split evenly over 3 ranks: 5 rows (2, 2, 1), 7 rows (3, 3, 1) and
// 2 rows (1, 1, none).
struct UnevenUnit : models::Unit {
  UnevenUnit() {
    register_parameter("w", at::arange(15, at::kFloat).view({5, 3}) * 0.1);
    register_parameter("norm", at::arange(7, at::kFloat) + 1);
    register_parameter("small", at::arange(4, at::kFloat).view({2, 2}) - 1);
  }
  at::Tensor forward(const at::Tensor& x, const models::UnitBatch&) override { return x; }
};

// An embedding of 7 rows (3, 3, 1 over 3 ranks).
struct LookupUnit : models::Unit {
  LookupUnit() { weight = register_parameter("table", at::arange(14, at::kFloat).view({7, 2})); }
  at::Tensor forward(const at::Tensor&, const models::UnitBatch& batch) override { return at::embedding(weight, batch.tokens); }
  at::Tensor lookup_table() const override { return weight; }
  at::Tensor weight;
};

}  // namespace

TEST_CASE("FSDP over 3 ranks: a lookup table's gradient sent as rows is the averaged dense gradient", "[parallel]") {
  constexpr int n = 3;
  // Rank r's 2 tokens and their output gradients; 3 x 2 gathered rows fit in the 7-row table.
  auto tokens_of = [](int r) { return at::tensor({int64_t{(2 * r) % 7}, int64_t{6 - r}}, at::kLong).view({1, 2}); };
  auto dh_of = [](int r) { return (at::arange(4, at::kFloat).view({1, 2, 2}) + 1) * (r + 1); };
  auto dense = at::zeros({7, 2}, at::kFloat);
  for (int r = 0; r < n; ++r) dense.index_add_(0, tokens_of(r).view({-1}), dh_of(r).view({-1, 2}));
  dense.div_(n);
  std::vector<at::Tensor> grads(n);
  std::vector<int> taken(n, 0);
  on_ranks(n, [&](int r, comm::CommunicatorPtr c) {
    auto unit = std::make_shared<LookupUnit>();
    parallel::DataParallelOptions options;
    options.shard = c;
    parallel::ShardedUnits fsdp({unit}, {{"table", unit->weight}}, options);
    fsdp.zero_gradients();
    taken[r] = fsdp.backward_rows(0, tokens_of(r), dh_of(r));
    fsdp.finish_gradients();
    grads[r] = fsdp.shards().front().master.grad().clone();
    // Once the gathered rows outnumber the table's, the gradient goes the dense way.
    taken[r] += 2 * !fsdp.backward_rows(0, at::zeros({1, 3}, at::kLong), at::zeros({1, 3, 2}));
  });
  const auto chunks = dense.chunk(n, 0);
  for (int r = 0; r < n; ++r) {
    INFO("rank " << r);
    CHECK(taken[r] == 3);
    CHECK(at::allclose(grads[r], chunks[r]));
  }
}

namespace {
// Two projections' weights (40 rows: 14, 14, 12 over 3 ranks; and 16 rows) and a norm's.
struct Float8Unit : models::Unit {
  Float8Unit() {
    wq = register_parameter("wq", at::sin(at::arange(40 * 32, at::kFloat)).view({40, 32}) * 3);
    wo = register_parameter("wo", at::cos(at::arange(16 * 32, at::kFloat)).view({16, 32}) / 7);
    norm = register_parameter("norm", at::arange(32, at::kFloat) / 5);
  }
  at::Tensor forward(const at::Tensor& x, const models::UnitBatch&) override { return x; }
  at::Tensor wq, wo, norm;
};
}  // namespace

TEST_CASE("FSDP's FP8 all-gather over 3 ranks: each FP8 weight arrives as one rank's tensorwise quantization of "
          "the whole fp32 weight, bytes and scale, with per-gather or precomputed scales; gradients as before",
          "[parallel]") {
  constexpr int n = 3;
  const Float8Unit whole;
  // One rank's quantization of each whole weight (kernels/float8.h's reference).
  auto reference = [](const at::Tensor& w) {
    auto q = at::empty(w.sizes(), at::kByte);
    auto scale = at::empty({1}, at::kFloat);
    const auto c = w.contiguous();
    kernels::fp8_quantize_ref({kernels::Dtype::f32, c.data_ptr(), c.size(0), c.size(1), kernels::ScaleGranularity::tensor,
                               kernels::Fp8Format::e4m3, false, q.data_ptr<uint8_t>(), scale.data_ptr<float>()});
    return std::pair{q, scale};
  };
  struct Seen {
    std::vector<at::Tensor> bytes, scales;  // wq, wo per gather
    at::Tensor norm, wq_grad, norm_grad;
    std::string refused;
  };
  std::vector<Seen> seen(n);
  on_ranks(n, [&](int r, comm::CommunicatorPtr c) {
    auto unit = std::make_shared<Float8Unit>();
    kernels::Float8Linears float8(kernels::Float8Recipe::tensorwise);
    float8.add(unit->wq);
    float8.add(unit->wo);
    parallel::DataParallelOptions options;
    options.shard = c;
    options.float8 = &float8;
    std::vector<std::pair<std::string, at::Tensor>> names;
    for (const auto& p : unit->named_parameters()) names.emplace_back(p.key(), p.value());
    parallel::ShardedUnits fsdp({unit}, names, options);
    auto look = [&] {
      for (const auto* w : {&unit->wq, &unit->wo}) {
        const auto q = float8.quantized(*w, true, true);
        seen[r].bytes.push_back(q.q.clone());
        seen[r].scales.push_back(q.scale.clone());
        seen[r].bytes.push_back(q.q_t.clone());  // the backward's operand: the transpose
        seen[r].scales.push_back(q.scale_t.clone());
      }
    };
    fsdp.zero_gradients();
    fsdp.before_forward(0);  // scales from this gather's all-reduce
    look();
    seen[r].norm = unit->norm.detach().clone();
    // Rank r's gradients: (r + 1) (p + 1), averaged 2 (p + 1) over 3 ranks, in the usual layout.
    unit->wq.mutable_grad() = (whole.wq + 1) * (r + 1);
    unit->norm.mutable_grad() = (whole.norm + 1) * (r + 1);
    fsdp.after_backward(0);
    fsdp.finish_gradients();
    for (const auto& s : fsdp.shards()) {
      if (s.name == "wq") seen[r].wq_grad = s.master.grad().clone();
      if (s.name == "norm") seen[r].norm_grad = s.master.grad().clone();
    }
    // Unit freed: the weight has no values to quantize.
    try {
      float8.quantized(unit->wq);
    } catch (const std::logic_error& e) {
      seen[r].refused = e.what();
    }
    fsdp.precompute_float8_scales();  // one all-reduce for every unit
    fsdp.before_forward(0);
    look();
    fsdp.release_all();
  });
  const auto [wq_q, wq_s] = reference(whole.wq);
  const auto [wo_q, wo_s] = reference(whole.wo);
  const std::vector<at::Tensor> bytes{wq_q, wq_q.t().contiguous(), wo_q, wo_q.t().contiguous()};
  const std::vector<at::Tensor> scales{wq_s, wq_s, wo_s, wo_s};
  const auto chunks = [&](const at::Tensor& t, int r) { return t.chunk(n, 0)[static_cast<size_t>(r)]; };
  for (int r = 0; r < n; ++r) {
    INFO("rank " << r);
    REQUIRE(seen[r].bytes.size() == 8);
    for (size_t i = 0; i < 8; ++i) {
      INFO((i < 4 ? "per-gather scales, " : "precomputed scales, ") << "operand " << i % 4 << " (wq, wqᵀ, wo, woᵀ)");
      CHECK(at::equal(seen[r].bytes[i], bytes[i % 4]));
      CHECK(at::equal(seen[r].scales[i], scales[i % 4]));
    }
    CHECK(at::equal(seen[r].norm, whole.norm));
    CHECK(at::allclose(seen[r].wq_grad, (chunks(whole.wq, r) + 1) * 2));
    CHECK(at::allclose(seen[r].norm_grad, (chunks(whole.norm, r) + 1) * 2));
    CHECK_THAT(seen[r].refused, Catch::Contains("while its unit is not gathered"));
  }
}

TEST_CASE("FSDP over 3 ranks with uneven chunks: masters, gathered parameters, averaged gradients, norm",
          "[parallel]") {
  constexpr int n = 3;
  const auto reference = std::make_shared<UnevenUnit>();
  std::map<std::string, at::Tensor> whole;  // name -> the parameter as every rank starts with it
  for (const auto& p : reference->named_parameters()) whole[p.key()] = p.value().detach().clone();
  struct Seen {
    std::map<std::string, at::Tensor> masters, master_grads, gathered;
    double grad_norm = 0;
    bool boxes_match = true;
  };
  std::vector<Seen> seen(n);  // Catch's assertions stay on this thread
  on_ranks(n, [&](int r, comm::CommunicatorPtr c) {
    auto unit = std::make_shared<UnevenUnit>();
    std::vector<std::pair<std::string, at::Tensor>> names;
    for (const auto& p : unit->named_parameters()) names.emplace_back(p.key(), p.value());
    parallel::DataParallelOptions options;
    options.shard = c;
    parallel::ShardedUnits fsdp({unit}, names, options);
    fsdp.zero_gradients();
    fsdp.before_forward(0);
    for (const auto& p : unit->named_parameters()) seen[r].gathered[p.key()] = p.value().detach().clone();
    // Rank r's gradient: (r + 1) (p + 1); their average over 3 ranks is 2 (p + 1).
    for (auto& p : unit->named_parameters()) p.value().mutable_grad() = (whole[p.key()] + 1) * (r + 1);
    fsdp.after_backward(0);
    fsdp.finish_gradients();
    for (const auto& s : fsdp.shards()) {
      seen[r].masters[s.name] = s.master.detach().clone();
      seen[r].master_grads[s.name] = s.master.grad().clone();
    }
    // The trainer's norm: the shards' gradients summed over the group their placements split across.
    std::vector<at::Tensor> grads;
    for (const auto& s : fsdp.shards())
      if (s.master.numel() > 0) grads.push_back(s.master.grad());
    seen[r].grad_norm = parallel::global_norm(grads, {c.get()}).item<double>();
    for (const auto& s : fsdp.shards()) {
      // A placement's box is the chunk FSDP holds, also for the empty chunks past the end.
      const auto box = parallel::Placement::whole(s.shape).split(parallel::MeshDim::dp_shard, 0, s.index, s.parts).box();
      seen[r].boxes_match = seen[r].boxes_match && box == checkpoint::dim0_box(s.shape, s.index, s.parts) &&
                            box.lengths.at(0) == s.master.size(0);
    }
  });
  double norm2 = 0;
  for (const auto& [name, p] : whole) norm2 += (p + 1).mul(2).pow(2).sum().item<double>();
  for (int r = 0; r < n; ++r) {
    INFO("rank " << r);
    for (const auto& [name, p] : whole) {
      INFO(name);
      const auto chunks = p.chunk(n, 0);
      const auto mine = r < static_cast<int>(chunks.size()) ? chunks[r] : p.narrow(0, 0, 0);
      CHECK(at::equal(seen[r].gathered.at(name), p));
      CHECK(at::equal(seen[r].masters.at(name), mine));
      CHECK(at::allclose(seen[r].master_grads.at(name), (mine + 1) * 2));
    }
    CHECK(seen[r].boxes_match);
    CHECK(seen[r].grad_norm == Approx(std::sqrt(norm2)).epsilon(1e-6));  // padding adds nothing
  }
}

namespace {

struct OneRankRun {
  std::vector<double> losses;
  std::map<std::string, at::Tensor> params;
  bool sinks = false;  // whether FSDP registered its weights' gradient sinks
  std::vector<comm::FlightRecorder::Entry> recorded;  // FSDP's collectives, once all have ended
  std::vector<comm::FlightRecorder::Group> groups;
};

// The debug model trained for 4 steps on one batch, plainly or under FSDP over a one-rank group
// (Gloo on the CPU, NCCL on CUDA), so that FSDP's whole path runs: the gathers and their
// copy-out, the gradients' copy-in and the reductions, and in bf16 the send casts the optimizer
// keeps (checked after every step: the next gathers then cast nothing).
OneRankRun train_one_rank(bool cuda, bool fsdp) {
  const auto args = models::model_spec("llama3").configure("debugmodel", {});
  const auto device = cuda ? at::Device(at::kCUDA, 0) : at::Device(at::kCPU);
  const auto compute = cuda ? at::kBFloat16 : at::kFloat;
  torch::manual_seed(11);
  const auto window = torch::randint(0, args->vocab_size(), {4, 129}, torch::kLong).to(device);
  const models::UnitBatch batch{window.narrow(1, 0, 128), window.narrow(1, 1, 128)};
  auto model_ptr = args->build(at::TensorOptions().dtype(at::kFloat).device(device), 128);
  auto& model = *model_ptr;
  model.init_weights(5);
  model.set_compute_dtype(compute);
  std::vector<std::pair<std::string, at::Tensor>> named;
  for (const auto& item : model.named_parameters()) named.emplace_back(item.key(), item.value());
  kernels::WeightCopies copies;
  std::unique_ptr<parallel::ShardedUnits> sharded;
  auto trained = named;
  OneRankRun run;
  auto recorder = std::make_shared<comm::FlightRecorder>(10000);
  if (fsdp) {
    const auto rendezvous = comm::Rendezvous::in_process(std::chrono::seconds(30));
    parallel::DataParallelOptions o;
    o.shard = cuda ? comm::make_nccl_communicator(*rendezvous, "fsdp_one", 0, 1, 0, recorder)
                   : comm::make_gloo_communicator(*rendezvous, "fsdp_one", 0, 1, recorder);
    o.compute_dtype = compute;
    sharded = std::make_unique<parallel::ShardedUnits>(model.units(), named, o);
    model.weight_services().sinks = &sharded->gradient_sinks();  // what parallelize hands the model
    run.sinks = sharded->gradient_sinks().has(model.units().at(1)->parameters().front());
    trained.clear();
    for (const auto& s : sharded->shards()) trained.emplace_back(s.name, s.master);
  }
  train::AdamW optimizer(trained, {});
  optimizer.keep_copies(&copies);
  if (sharded) sharded->keep_send_copies(copies);
  else model.weight_services().copies = &copies;
  parallel::UnitExecutor executor(model.units(), std::vector<bool>(model.units().size(), false), sharded.get());
  for (int step = 0; step < 4; ++step) {
    if (sharded) sharded->zero_gradients();
    else optimizer.zero_grad();
    run.losses.push_back(executor.forward(batch).item<double>());
    executor.backward(1.0);
    if (sharded) sharded->finish_gradients();
    optimizer.step(1e-3);
    if (!sharded || compute == at::kFloat) continue;
    for (const auto& [name, master] : trained) {
      INFO("step " << step << ", " << name);
      const auto copy = copies.current(master);
      REQUIRE(copy.defined());
      CHECK(torch::equal(copy, master.to(at::kBFloat16)));
    }
  }
  for (const auto& [name, t] : trained) run.params[name] = t.detach().cpu().clone();
  // Every collective ends (NCCL: its watchdog sees each event complete, within its 100 ms naps).
  auto unfinished = [&] {
    const auto entries = recorder->entries();
    return std::count_if(entries.begin(), entries.end(),
                         [](const auto& e) { return e.ended.time_since_epoch().count() == 0; });
  };
  for (int i = 0; i < 50 && unfinished() > 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  if (unfinished() == 0) run.recorded = recorder->entries();
  run.groups = recorder->groups();
  return run;
}

void check_one_rank_fsdp(bool cuda, double loss_epsilon, double param_tolerance, bool sinks = true) {
  const auto plain = train_one_rank(cuda, false);
  const auto sharded = train_one_rank(cuda, true);
  CHECK(sharded.sinks == sinks);
  // Its flight record: the gathers and reductions of 4 steps, numbered in order, none failed.
  REQUIRE(sharded.recorded.size() > 8);
  for (size_t i = 0; i < sharded.recorded.size(); ++i) {
    CHECK(sharded.recorded[i].seq == i + 1);
    CHECK_FALSE(sharded.recorded[i].failed);
  }
  CHECK(sharded.recorded.front().op == "all_gather");
  REQUIRE(sharded.groups.size() == 1);  // joined when it connected
  CHECK(sharded.groups[0].name == "fsdp_one");
  CHECK(sharded.groups[0].size == 1);
  CHECK(sharded.groups[0].issued == sharded.recorded.size());
  REQUIRE(sharded.losses.size() == plain.losses.size());
  for (size_t i = 0; i < plain.losses.size(); ++i)
    CHECK(sharded.losses[i] == Approx(plain.losses[i]).epsilon(loss_epsilon));
  CHECK(plain.losses.back() < plain.losses.front());
  REQUIRE(sharded.params.size() == plain.params.size());
  for (const auto& [name, t] : plain.params) {
    INFO(name);
    CHECK(relative_error(sharded.params.at(name), t) < param_tolerance);
  }
}

}  // namespace

TEST_CASE("FSDP over a one-rank Gloo group trains as the plain model", "[parallel]") {
  check_one_rank_fsdp(false, 1e-6, 1e-5);
  SECTION("without gradient sinks (TROUPE_FSDP_GRADIENT_SINKS=0): every gradient through autograd") {
    struct Unset {
      ~Unset() { unsetenv("TROUPE_FSDP_GRADIENT_SINKS"); }
    } unset;
    setenv("TROUPE_FSDP_GRADIENT_SINKS", "0", 1);
    check_one_rank_fsdp(false, 1e-6, 1e-5, false);
  }
}

TEST_CASE("FSDP over a one-rank NCCL group trains as the plain model and gathers the optimizer's bf16 copies",
          "[gpu]") {
  REQUIRE(torch::cuda::is_available());
  check_one_rank_fsdp(true, 1e-2, 5e-3);
}

#ifdef TROUPE_WITH_CUDA
// A NCCL wait stalls the waiting stream, not the host: the recorder learns how long from the
// device. A collective held back by a side stream's long kernel is exposed for about that
// kernel's time; one that ended while the stream computed is not exposed at all.
TEST_CASE("a NCCL rank's exposed communication is its stream's stall in waits", "[gpu]") {
  REQUIRE(torch::cuda::is_available());
  const auto rendezvous = comm::Rendezvous::in_process(std::chrono::seconds(30));
  auto recorder = std::make_shared<comm::FlightRecorder>(16);
  auto nccl = comm::make_nccl_communicator(*rendezvous, "exposure", 0, 1, 0, recorder);
  const auto t = torch::ones({1 << 20}, torch::TensorOptions().device(torch::kCUDA));
  auto side = c10::cuda::getStreamFromPool(false, 0), compute = c10::cuda::getStreamFromPool(false, 0);
  const int64_t cycles = 100'000'000;
  // The sleep kernel's own time, by events on one stream.
  double slept = 0;
  {
    c10::cuda::CUDAStreamGuard guard(side);
    at::cuda::CUDAEvent a(cudaEventDefault), b(cudaEventDefault);
    a.record(side);
    at::cuda::sleep(cycles);
    b.record(side);
    b.synchronize();
    slept = 1e-3 * a.elapsed_time(b);
  }
  REQUIRE(slept > 0.01);
  // A first collective sets the communicator up on the host: not inside the timed window (the
  // compute stream must reach its wait while the sleep still runs).
  nccl->all_reduce(t, comm::ReduceOp::sum)->wait();
  c10::cuda::device_synchronize();
  const double before = recorder->waited_seconds();
  comm::WorkPtr work;
  {
    c10::cuda::CUDAStreamGuard guard(side);  // the collective follows the side stream's sleep
    at::cuda::sleep(cycles);
    work = nccl->all_reduce(t, comm::ReduceOp::sum);
  }
  {
    c10::cuda::CUDAStreamGuard guard(compute);  // idle: it stalls at the wait
    work->wait();
    CHECK(recorder->waited_seconds() == before);  // the device has not passed the wait yet
    compute.synchronize();
  }
  const double exposed = recorder->waited_seconds() - before;
  INFO("slept " << slept << " s, exposed " << exposed << " s");
  CHECK(exposed > 0.8 * slept);
  CHECK(exposed < 1.2 * slept + 0.005);
  {
    c10::cuda::CUDAStreamGuard guard(compute);  // the collective runs while the stream sleeps
    work = nccl->all_reduce(t, comm::ReduceOp::sum);
    at::cuda::sleep(cycles);
    work->wait();
    compute.synchronize();
  }
  const double hidden = recorder->waited_seconds() - before - exposed;
  CHECK(hidden >= 0);
  CHECK(hidden < 0.05 * slept);
}
#endif

TEST_CASE("FSDP's kept bf16 send casts follow every write to their masters", "[parallel]") {
  auto model_ptr = models::model_spec("llama3").configure("debugmodel", {})->build(at::TensorOptions().dtype(at::kFloat), 2048);
  auto& model = *model_ptr;
  model.init_weights(2);
  std::vector<std::pair<std::string, at::Tensor>> named;
  for (const auto& item : model.named_parameters()) named.emplace_back(item.key(), item.value());
  const auto rendezvous = comm::Rendezvous::in_process(std::chrono::seconds(30));
  parallel::DataParallelOptions o;
  o.shard = comm::make_gloo_communicator(*rendezvous, "sends", 0, 1);
  o.compute_dtype = at::kBFloat16;
  parallel::ShardedUnits sharded(model.units(), named, o);
  kernels::WeightCopies copies;
  sharded.keep_send_copies(copies);
  std::vector<at::Tensor> masters;  // block 1's (unit 2), whole: one rank
  for (const auto& s : sharded.shards())
    if (s.unit == 2) masters.push_back(s.master);
  REQUIRE(!masters.empty());
  const auto params = model.units().at(2)->parameters();
  REQUIRE(params.size() == masters.size());
  auto gathered_matches = [&] {
    sharded.before_forward(2);
    bool same = true;
    for (size_t k = 0; k < params.size(); ++k) same = same && torch::equal(params[k], masters[k].to(at::kBFloat16));
    sharded.after_forward(2);  // frees it (the default policy keeps only the last unit)
    return same;
  };
  CHECK(!copies.current(masters.front()).defined());  // placed, never cast yet
  CHECK(gathered_matches());
  for (const auto& m : masters) CHECK(copies.current(m).defined());  // the gather's cast, kept
  torch::NoGradGuard no_grad;
  masters.back().mul_(3.0);  // a write through one view (a checkpoint load, say) ...
  for (const auto& m : masters) CHECK(!copies.current(m).defined());  // ... stales the unit's casts
  CHECK(gathered_matches());
  for (const auto& m : masters) CHECK(copies.current(m).defined());
  sharded.release_all();
}

TEST_CASE("a Trainer that shards alone (step-profile --rank-of 1) trains as an unsharded one; as rank 0 of 2 FSDP "
          "ranks or of a cp pair (replicas) it holds half",
          "[parallel]") {
  TempDir dir;
  const auto c = small_job_config(dir);  // 2 micro-batches of 2 x 32 tokens a step
  const int64_t vocab = 2048;
  torch::manual_seed(3);
  std::vector<std::shared_ptr<const data::Batch>> batches;
  for (int i = 0; i < 2; ++i) {
    const auto tokens = torch::randint(0, vocab, {2, 33}, torch::kLong);
    auto b = std::make_shared<data::Batch>();
    b->tokens = tokens.narrow(1, 0, 32).contiguous();
    b->targets = tokens.narrow(1, 1, 32).contiguous();
    batches.push_back(std::move(b));
  }
  auto run = [&](int as) {
    parallel::RankContext rank;
    rank.shard_alone = as == 1;
    if (as == 1) rank.rendezvous = comm::Rendezvous::in_process(std::chrono::seconds(30));
    if (as > 1) rank.world = as, rank.replicas = true;
    train::Trainer trainer(c, train::job_model(c, vocab), rank);
    // As rank 0 of 2 it takes half of the global batch: one of the micro-batches.
    const std::vector mine(batches.begin(), batches.begin() + trainer.micro_batches_per_step());
    std::vector<train::StepStats> steps;
    for (int64_t s = 1; s <= 6; ++s) steps.push_back(trainer.step(s, mine));
    // Under FSDP a block's parameters are views of its gathered buffer, emptied after its
    // backward (the optimizer gathers units 0 and 1 again for the next step: unit 3 is not).
    const auto block_weight = trainer.model().units().at(3)->parameters().front();
    CHECK((block_weight.storage().nbytes() == 0) == (as > 0));
    // Rank 0 of `as` holds the first of `as` row chunks of every parameter.
    for (const auto& t : trainer.restorable_state(/*model_only=*/true)) {
      INFO(t.name);
      const auto rows = t.global_shape.empty() ? 1 : t.global_shape[0];
      CHECK(t.box.offsets.front() == 0);
      CHECK(t.box.lengths.front() == (as > 1 ? (rows + as - 1) / as : rows));
    }
    return steps;
  };
  const auto plain = run(0), alone = run(1), half = run(2);
  REQUIRE(alone.size() == plain.size());
  for (size_t i = 0; i < plain.size(); ++i) {
    INFO("step " << plain[i].step);
    CHECK(alone[i].loss == Approx(plain[i].loss).epsilon(1e-6));
    CHECK(alone[i].grad_norm == Approx(plain[i].grad_norm).epsilon(1e-5));
  }
  // As rank 0 of 2 it trains another model (every chunk is its own): it still learns the batches.
  REQUIRE(half.size() == plain.size());
  for (const auto& s : half) CHECK(std::isfinite(s.loss));
  CHECK(half.back().loss < half.front().loss - 0.1);
  // As rank 0 of a context-parallel pair (step-profile --rank-of 2 with context_parallel_degree 2):
  // FSDP over dp_shard x cp holds half of every parameter, and it learns its half of the sequences.
  auto cp = c;
  cp.parallelism.context_parallel_degree = 2;
  parallel::RankContext rank;
  rank.world = 2;
  rank.replicas = true;
  train::Trainer trainer(cp, train::job_model(cp, vocab), rank);
  std::vector<double> losses;
  for (int64_t s = 1; s <= 6; ++s) losses.push_back(trainer.step(s, batches).loss);  // cp ranks share the batch
  for (double l : losses) CHECK(std::isfinite(l));
  CHECK(losses.back() < losses.front() - 0.1);
  for (const auto& t : trainer.restorable_state(/*model_only=*/true)) {
    INFO(t.name);
    const auto rows = t.global_shape.empty() ? 1 : t.global_shape[0];
    CHECK(t.box.lengths.front() == (rows + 1) / 2);
  }
}

TEST_CASE("rendezvous: a missing rank is an error naming the key, not a hang", "[parallel]") {
  auto rdzv = comm::Rendezvous::in_process(std::chrono::milliseconds(300));
  CHECK_THROWS_WITH(rdzv->get("nobody/here"), Catch::Contains("nobody/here") && Catch::Contains("did not arrive"));
}

TEST_CASE("FSDP, DDP and HSDP over 2 and 4 ranks train as one rank does", "[parallel]") {
  // fsdp4 also recomputes the blocks' element-wise ops (activation_checkpoint "op").
  TempDir dir;
  const auto tokens = prepare_tokens(dir);
  const auto one_cfg = dp_job(dir, tokens, 1, 1, "one");
  const auto one = run_with_timeout(one_cfg);
  REQUIRE(one.steps.size() == 20);
  const auto reference = final_model(one_cfg);
  // The loss must have moved, or agreeing would prove little.
  CHECK(one.steps.back().loss < one.steps.front().loss - 0.5);

  struct Layout {
    const char* name;
    int ranks;
    int64_t replicate;
    const char* reshard;
  };
  for (const auto& l : {Layout{"fsdp2", 2, 1, "default"}, Layout{"fsdp4", 4, 1, "always"},
                        Layout{"ddp2", 2, 2, "default"}, Layout{"hsdp2x2", 4, 2, "never"}}) {
    SECTION(l.name) {
      auto cfg = dp_job(dir, tokens, l.ranks, l.replicate, l.name);
      cfg.parallelism.fsdp_reshard_after_forward = l.reshard;
      if (l.reshard == std::string("always")) {
        // The "op" policy's projections keep the norms' gathered weights by reference: they
        // must see them gathered again for the backward.
        cfg.activation_checkpoint.mode = "selective";
        cfg.activation_checkpoint.selective_ac_option = "op";
      }
      const auto many = run_with_timeout(cfg);
      check_same_run(many, one);
      check_same_model(final_model(cfg), reference);
    }
  }
}

TEST_CASE("pipelines of 2 and 4 stages train as one rank does, with every schedule", "[parallel]") {
  TempDir dir;
  const auto tokens = prepare_tokens(dir);
  auto one_cfg = pp_job(dir, tokens, 1, 1, "1F1B", "one");
  const auto one = run_with_timeout(one_cfg);
  REQUIRE(one.steps.size() == 10);
  CHECK(one.steps.back().loss < one.steps.front().loss - 0.3);
  const auto reference = final_model(one_cfg);
  for (int pp : {2, 4})
    for (const auto& schedule : parallel::pp::schedule_names()) {
      SECTION("pp " + std::to_string(pp) + " " + schedule) {
        auto cfg = pp_job(dir, tokens, pp, pp, schedule, "pp" + std::to_string(pp) + schedule);
        const auto run = run_with_timeout(cfg);
        INFO(run.message);
        check_same_run(run, one);
        check_same_model(final_model(cfg), reference);
        check_same_validation(cfg, one_cfg);
      }
    }
  SECTION("uneven split points, activation checkpointing, 3 virtual stages per rank") {
    auto cfg = pp_job(dir, tokens, 2, 2, "1F1B", "uneven");
    cfg.parallelism.pipeline_parallel_split_points = {"layers.1"};  // 1 block, then 7
    cfg.activation_checkpoint.mode = "full";
    check_same_run(run_with_timeout(cfg), one);
    auto deep = pp_job(dir, tokens, 2, 2, "Interleaved1F1B", "v3");
    deep.parallelism.pipeline_parallel_split_points = {"layers.1", "layers.2", "layers.4", "layers.5", "layers.7"};
    check_same_run(run_with_timeout(deep), one);
  }
  SECTION("pp 2 x FSDP 2, with 1F1B and with the zero-bubble V") {
    for (const char* schedule : {"1F1B", "ZBVZeroBubble"}) {
      INFO(schedule);
      auto cfg = pp_job(dir, tokens, 4, 2, schedule, std::string("ppfsdp") + schedule);
      const auto run = run_with_timeout(cfg);
      INFO(run.message);
      check_same_run(run, one);
      check_same_model(final_model(cfg), reference);
      check_same_validation(cfg, one_cfg);
    }
  }
}

TEST_CASE("a pipeline records its actions as a Chrome trace and resumes from its checkpoint", "[parallel]") {
  TempDir dir;
  const auto tokens = prepare_tokens(dir);
  auto cfg = pp_job(dir, tokens, 2, 2, "1F1B", "traced");
  cfg.profiling.enable_profiling = true;
  cfg.checkpoint.interval = 5;
  const auto full = run_with_timeout(cfg);
  REQUIRE(full.exit_code == 0);
  const auto schedule = parallel::pp::make_schedule("1F1B", 2, 4);
  for (int r = 0; r < 2; ++r) {
    INFO("rank " << r);
    std::ifstream f(cfg.job.dump_folder + "/profile_traces/pipeline_rank" + std::to_string(r) + ".json");
    REQUIRE(f.good());
    const auto trace = nlohmann::json::parse(f);
    size_t events = 0;
    double last_end = 0;
    for (const auto& e : trace["traceEvents"]) {
      if (e["ph"] == "M") continue;
      ++events;
      CHECK(e["tid"] == r);
      if (e["ph"] == "X") {
        CHECK(e["ts"].get<double>() >= last_end);  // one action at a time, in order
        last_end = e["ts"].get<double>() + e["dur"].get<double>();
      }
    }
    CHECK(events == 10 * schedule.actions[r].size());  // every action of every step
  }
  // Resumed from step 5 by the same layout and by one rank (the stages' tensors merge).
  for (int ranks : {2, 1}) {
    SECTION(std::to_string(ranks) + " ranks") {
      auto resumed = pp_job(dir, tokens, ranks, ranks, "1F1B", "resumed" + std::to_string(ranks));
      resumed.checkpoint.initial_load_path = checkpoint::checkpoint_folder(cfg) + "/step-5";
      resumed.checkpoint.initial_load_model_only = false;
      check_same_run(run_with_timeout(resumed), full, 6);
      check_same_model(final_model(resumed), final_model(cfg));
    }
  }
}

TEST_CASE("an output tied to the embedding trains under FSDP and DDP as on one rank", "[parallel]") {
  TempDir dir;
  const auto tokens = prepare_tokens(dir);
  auto tied = [&](int ranks, int64_t replicate, const std::string& name) {
    auto c = dp_job(dir, tokens, ranks, replicate, name);
    c.model.dimensions = {{"tie_embeddings", "true", "test"}};
    c.training.steps = 10;
    return c;
  };
  const auto one_cfg = tied(1, 1, "one");
  const auto one = run_with_timeout(one_cfg);
  REQUIRE(one.steps.size() == 10);
  CHECK(one.steps.back().loss < one.steps.front().loss - 0.3);
  const auto reference = final_model(one_cfg);
  CHECK(reference.count("model.output.weight") == 0);  // one tensor, saved as the embedding
  CHECK(reference.count("model.tok_embeddings.weight") == 1);
  for (const auto& [ranks, replicate, reshard] :
       {std::tuple{2, 1, "default"}, std::tuple{4, 1, "always"}, std::tuple{2, 2, "never"}}) {
    auto cfg = tied(ranks, replicate, "tied" + std::to_string(ranks) + "x" + std::to_string(replicate) + reshard);
    cfg.parallelism.fsdp_reshard_after_forward = reshard;
    INFO(cfg.job.dump_folder);
    check_same_run(run_with_timeout(cfg), one);
    check_same_model(final_model(cfg), reference);
  }
}

TEST_CASE("Qwen3, Qwen3 MoE and DeepSeek V3 under FSDP 2, HSDP 2x2, pp 2 (1F1B, ZBVZeroBubble) and cp 2 train as "
          "one rank does and resume exactly",
          "[parallel]") {
  // The debug flavors cut to 4 blocks (head_dim 32 over dim 256, q/k norms; DeepSeek's latent
  // attention, a dense first block, shared experts), through the same
  // layouts as Llama: the trainer, FSDP and the pipeline never name the family. The MoE's expert
  // biases move every step (averaged loads across replicas: as one rank's) and are checkpointed;
  // its load-balancing loss, a product of per-batch means, differs with the batch split, so it is off.
  const std::string family = GENERATE(std::string("qwen3"), std::string("qwen3_moe"), std::string("deepseek_v3"));
  INFO(family);
  TempDir dir;
  const auto tokens = prepare_tokens(dir);
  auto qwen3 = [&](config::JobConfig c) {
    c.model.name = family;
    c.model.flavor = "debugmodel";
    c.model.dimensions = {{"n_layers", "4", "test"}};
    if (family != "qwen3")
      c.model.dimensions.push_back({"load_balance_coeff", "0.01", "test"}),
          c.model.dimensions.push_back({"aux_loss_coeff", "0", "test"});
    c.training.steps = 10;
    c.checkpoint.interval = 5;
    return c;
  };
  const auto one_cfg = qwen3(dp_job(dir, tokens, 1, 1, "one"));
  const auto one = run_with_timeout(one_cfg);
  REQUIRE(one.steps.size() == 10);
  CHECK(one.steps.back().loss < one.steps.front().loss - 0.3);
  const auto reference = final_model(one_cfg);
  CHECK(reference.count(family == "deepseek_v3" ? "model.layers.3.attention.kv_norm.weight"
                                                : "model.layers.3.attention.q_norm.weight") == 1);
  if (family != "qwen3") {
    const auto step5 = checkpoint::checkpoint_folder(one_cfg) + "/step-5";
    const auto bias = checkpoint::read_whole_tensors(step5, checkpoint::read_metadata(step5), "buffer.");
    REQUIRE(bias.count("buffer.layers.3.moe.expert_bias") == 1);
    CHECK(bias.at("buffer.layers.3.moe.expert_bias").abs().sum().item<double>() > 0);  // balancing moved it
  }
  SECTION("fsdp 2 and hsdp 2x2") {
    for (const auto& [ranks, replicate] : {std::pair{2, 1}, std::pair{4, 2}}) {
      auto cfg = qwen3(dp_job(dir, tokens, ranks, replicate, "dp" + std::to_string(ranks)));
      INFO(cfg.job.dump_folder);
      check_same_run(run_with_timeout(cfg), one);
      check_same_model(final_model(cfg), reference);
    }
  }
  SECTION("pp 2, 1F1B and ZBVZeroBubble") {
    for (const char* schedule : {"1F1B", "ZBVZeroBubble"}) {
      auto cfg = qwen3(pp_job(dir, tokens, 2, 2, schedule, std::string("pp") + schedule));
      cfg.validation.enable = false;
      INFO(schedule);
      const auto run = run_with_timeout(cfg);
      INFO(run.message);
      check_same_run(run, one);
      check_same_model(final_model(cfg), reference);
    }
  }
  SECTION("context parallelism: cp 2 (ring) and cp 2 x fsdp 2 (allgather)") {
    for (const auto& [ranks, method] : {std::pair<int, std::string>{2, "ring"}, {4, "allgather"}}) {
      auto cfg = qwen3(dp_job(dir, tokens, ranks / 2, 1, "cp_" + method));
      cfg.job.local_ranks = ranks;
      cfg.parallelism.context_parallel_degree = 2;
      cfg.parallelism.context_parallel_rotate_method = method;
      INFO(method);
      const auto run = run_with_timeout(cfg);
      INFO(run.message);
      check_same_run(run, one);
      check_same_model(final_model(cfg), reference);
    }
  }
  SECTION("resumed from step 5 on 2 ranks: steps 6..10 as the run that never stopped") {
    auto cfg = qwen3(dp_job(dir, tokens, 2, 1, "resumed"));
    cfg.checkpoint.initial_load_path = checkpoint::checkpoint_folder(one_cfg) + "/step-5";
    cfg.checkpoint.initial_load_model_only = false;
    check_same_run(run_with_timeout(cfg), one, 6);
    check_same_model(final_model(cfg), reference);
  }
}

TEST_CASE("a checkpoint saved by 2 FSDP ranks resumes exactly on 2, 4 and 1 ranks", "[parallel]") {
  TempDir dir;
  const auto tokens = prepare_tokens(dir);
  const auto full_cfg = dp_job(dir, tokens, 2, 1, "full");
  const auto full = run_with_timeout(full_cfg);
  REQUIRE(full.exit_code == 0);
  const auto step10 = checkpoint::checkpoint_folder(full_cfg) + "/step-10";
  REQUIRE(std::filesystem::exists(step10 + "/metadata.json"));

  for (int ranks : {2, 4, 1}) {
    SECTION(std::to_string(ranks) + " ranks") {
      // Model, optimizer, schedule and the data position (windows consumed) carry over to any
      // number of ranks: steps 11..20 and the final model match the uninterrupted run.
      auto cfg = dp_job(dir, tokens, ranks, 1, "resume" + std::to_string(ranks));
      cfg.checkpoint.initial_load_path = step10;
      cfg.checkpoint.initial_load_model_only = false;
      const auto resumed = run_with_timeout(cfg);
      check_same_run(resumed, full, 11);
      check_same_model(final_model(cfg), final_model(full_cfg));
    }
  }
}

TEST_CASE("a text dataset's position cannot move to another number of ranks", "[parallel]") {
  TempDir dir;
  const auto tokens = prepare_tokens(dir);
  auto two = dp_job(dir, tokens, 2, 1, "two");
  two.training.dataset = "text";
  two.training.dataset_path = corpus_slice(dir);
  two.training.steps = 10;
  two.checkpoint.last_save_model_only = false;
  REQUIRE(run_with_timeout(two).exit_code == 0);
  auto four = dp_job(dir, tokens, 4, 1, "four");
  four.training.dataset = "text";
  four.training.dataset_path = two.training.dataset_path;
  four.checkpoint.initial_load_path = checkpoint::checkpoint_folder(two) + "/step-10";
  four.checkpoint.initial_load_model_only = false;
  const auto out = run_with_timeout(four);
  CHECK(out.exit_code == 1);
  CHECK_THAT(out.message, Catch::Contains("cannot move to 4") && Catch::Contains("exclude_from_loading"));
  four.checkpoint.exclude_from_loading = {"dataloader"};
  four.job.dump_folder = dir.file("four-fresh-data");
  CHECK(run_with_timeout(four).exit_code == 0);
}

TEST_CASE("token positions move between layouts by the windows consumed", "[parallel]") {
  data::DataPosition saved;
  saved.index = 20;  // each of 2 ranks consumed 20 windows: 40 in all
  const auto four = train::reshard_token_position(saved, 2, 4, 1);
  CHECK(four.index == 10);
  CHECK(four.produced == 10);
  CHECK(train::reshard_token_position(saved, 2, 1, 4).index == 40);
  CHECK_THROWS_WITH(train::reshard_token_position(saved, 2, 3, 1), Catch::Contains("do not split evenly over 3"));
  saved.epoch = 1;
  CHECK_THROWS_WITH(train::reshard_token_position(saved, 2, 4, 1), Catch::Contains("epoch 1"));
}

TEST_CASE("node placement: flags, SLURM's variables, and clear errors", "[parallel]") {
  using runtime::resolve_placement;
  std::map<std::string, std::string> vars;
  auto env = [&](const char* name) -> const char* {
    auto it = vars.find(name);
    return it == vars.end() ? nullptr : it->second.c_str();
  };
  auto p = resolve_placement(std::nullopt, std::nullopt, "", env);
  CHECK(p.nnodes == 1);
  CHECK(p.node_rank == 0);
  p = resolve_placement(2, 1, "10.0.0.5:4000", env);
  CHECK(p.rdzv_host == "10.0.0.5");
  CHECK(p.rdzv_port == 4000);
  CHECK_THROWS_WITH(resolve_placement(2, 2, "h:1", env), Catch::Contains("--node-rank 2 is outside 0..1"));
  CHECK_THROWS_WITH(resolve_placement(2, 0, "", env), Catch::Contains("needs --rdzv"));
  CHECK_THROWS_WITH(resolve_placement(2, 0, "h:port", env), Catch::Contains("is not an integer"));
  vars = {{"SLURM_JOB_ID", "77"}, {"SLURM_NNODES", "4"}, {"SLURM_NODEID", "3"},
          {"SLURM_JOB_NODELIST", "gpu[007-010],cpu1"}};
  p = resolve_placement(std::nullopt, std::nullopt, "", env);
  CHECK(p.nnodes == 4);
  CHECK(p.node_rank == 3);
  CHECK(p.rdzv_host == "gpu007");
  CHECK(p.rdzv_port == 29500);
  vars["TROUPE_RDZV"] = "head:6000";
  CHECK(resolve_placement(std::nullopt, std::nullopt, "", env).rdzv_host == "head");
  CHECK(runtime::first_slurm_host("node1,node2") == "node1");
  CHECK(runtime::first_slurm_host("a[3,5-6]") == "a3");
  CHECK(p.ranks_per_node == 0);
  CHECK(runtime::local_ranks_under(p, -1) == -1);

  auto place = [&](const std::map<std::string, std::string>& more) {
    for (const auto& [k, v] : more) vars[k] = v;
    const auto q = resolve_placement(std::nullopt, std::nullopt, "", env);
    return std::vector<int>{q.nnodes, q.node_rank, q.ranks_per_node, q.first_gpu};
  };
  // srun's step: one task per node keeps the node layout, from the step's own counts.
  CHECK(place({{"SLURM_STEP_NUM_NODES", "2"}, {"SLURM_STEP_NUM_TASKS", "2"}, {"SLURM_NODEID", "1"}}) ==
        std::vector<int>{2, 1, 0, 0});
  // --ntasks-per-node=8 over 2 nodes: task 11 is node 11 of 16, one rank on its machine's GPU 3.
  CHECK(place({{"SLURM_STEP_NUM_TASKS", "16"}, {"SLURM_PROCID", "11"}, {"SLURM_LOCALID", "3"},
               {"CUDA_VISIBLE_DEVICES", "0,1,2,3,4,5,6,7"}}) == std::vector<int>{16, 11, 1, 3});
  // --gpus-per-task=1: the task sees only its own GPU.
  CHECK(place({{"CUDA_VISIBLE_DEVICES", "3"}}) == std::vector<int>{16, 11, 1, 0});
  // Flags place by hand: job.local_ranks and the first GPUs again.
  p = resolve_placement(4, 1, "", env);
  CHECK(std::vector<int>{p.nnodes, p.node_rank, p.ranks_per_node, p.first_gpu} == std::vector<int>{4, 1, 0, 0});
  p = resolve_placement(std::nullopt, std::nullopt, "", env);
  CHECK(runtime::local_ranks_under(p, -1) == 1);
  CHECK(runtime::local_ranks_under(p, 1) == 1);
  CHECK_THROWS_WITH(runtime::local_ranks_under(p, 8), Catch::Contains("job.local_ranks = 8, but SLURM runs 16 tasks"));
  vars["SLURM_PROCID"] = "x";
  CHECK_THROWS_WITH(resolve_placement(std::nullopt, std::nullopt, "", env), Catch::Contains("SLURM_PROCID: 'x'"));
}

namespace {

std::vector<double> logged_losses(const std::string& dump) {
  std::vector<double> out;
  std::ifstream jsonl(dump + "/metrics.jsonl");
  for (std::string line; std::getline(jsonl, line);) {
    const auto at = line.find("\"loss\":");
    if (at != std::string::npos && line.find("\"step\"") != std::string::npos) out.push_back(std::stod(line.substr(at + 7)));
  }
  return out;
}

}  // namespace

TEST_CASE("two processes on loopback train as one rank does: 2 ranks each by flags, 1 each as SLURM tasks",
          "[parallel]") {
  TempDir dir;
  const auto tokens = prepare_tokens(dir);
  auto one_cfg = dp_job(dir, tokens, 1, 1, "one");
  one_cfg.checkpoint.enable = false;
  one_cfg.training.steps = 8;
  const auto one = run_with_timeout(one_cfg);
  REQUIRE(one.exit_code == 0);
  // Node 1 starts first; node 0's log names the layout, and the losses are the one rank's.
  auto check_pair = [&](const std::vector<std::string>& node0_argv, const std::vector<std::string>& node1_argv,
                        const std::string& dump, const std::string& layout) {
    ChildProcess node1(node1_argv);
    ChildProcess node0(node0_argv);
    std::string out0, out1;
    CHECK(node0.wait(120, out0) == 0);
    CHECK(node1.wait(30, out1) == 0);
    INFO(out0 << "\n---\n" << out1);
    CHECK_THAT(out0, Catch::Contains(layout));
    const auto losses = logged_losses(dir.file(dump));
    REQUIRE(losses.size() == one.steps.size());
    for (size_t i = 0; i < losses.size(); ++i) CHECK(losses[i] == Approx(one.steps[i].loss).epsilon(1e-4));
  };

  const auto nodes_config = dir.write("nodes.toml", job_toml(dir, tokens, 2, "nodes", 8, 30));
  auto node = [&](int rank) {
    return std::vector<std::string>{troupe_binary(), "train", "--config", nodes_config, "--nnodes", "2",
                                    "--node-rank", std::to_string(rank), "--rdzv",
                                    "127.0.0.1:" + std::to_string(listen_port(0))};
  };
  check_pair(node(0), node(1), "nodes", "2 nodes, 4 ranks");

  // srun --ntasks-per-node=2 on one machine: each task is a node of one rank, placed by SLURM's
  // variables alone; a job.local_ranks of 2 contradicts that.
  const auto tasks_config = dir.write("tasks.toml", job_toml(dir, tokens, 1, "tasks", 8, 30));
  auto task = [&](int id, const std::string& local_ranks) {
    return std::vector<std::string>{"/usr/bin/env", "SLURM_JOB_ID=9", "SLURM_NNODES=1", "SLURM_NODEID=0",
                                    "SLURM_STEP_NUM_NODES=1", "SLURM_STEP_NUM_TASKS=2",
                                    "SLURM_PROCID=" + std::to_string(id), "SLURM_LOCALID=" + std::to_string(id),
                                    "TROUPE_RDZV=127.0.0.1:" + std::to_string(listen_port(5)), troupe_binary(),
                                    "train", "--config", tasks_config, "--training.local_batch_size", "2",
                                    "--job.local_ranks", local_ranks};
  };
  {
    ChildProcess refused(task(0, "2"));
    std::string out;
    CHECK(refused.wait(30, out) == runtime::exit_code::bad_config);
    CHECK_THAT(out, Catch::Contains("job.local_ranks = 2, but SLURM runs 2 tasks"));
  }
  check_pair(task(0, "-1"), task(1, "-1"), "tasks", "2 nodes, 2 ranks");
}

TEST_CASE("kill -QUIT on a running 2-rank job prints the stacks and writes each rank's collectives; it goes on",
          "[parallel]") {
  TempDir dir;
  const auto tokens = prepare_tokens(dir);
  const auto config = dir.write("job.toml", job_toml(dir, tokens, 2, "quit", 100000, 30));
  ChildProcess job({troupe_binary(), "train", "--config", config});
  std::string out;
  REQUIRE(job.wait_for_line("step:     3", out));
  job.signal(SIGQUIT);
  REQUIRE(job.wait_for_line("troupe: each rank's last collectives: " + dir.file("quit") + "/comm_traces", out));
  REQUIRE(job.wait_for_line("step:     6", out));  // it went on
  job.signal(SIGTERM);
  CHECK(job.wait(60, out) >= 0);
  INFO(out);
  CHECK_THAT(out, Catch::Contains("troupe: SIGQUIT: the stack of every thread follows"));
  for (int rank : {0, 1}) {
    const auto record =
        nlohmann::json::parse(std::ifstream(dir.file("quit/comm_traces/rank_" + std::to_string(rank) + ".json")));
    CHECK(record["rank"] == rank);
    CHECK(record["entries"].size() > 10);
  }
  const auto report = comm::flight_record_report(dir.file("quit/comm_traces"));
  CHECK_THAT(report, Catch::Contains("dp_shard") && Catch::Contains("(ranks 0 1 of 2)"));
}

TEST_CASE("a damaged token in one rank's data ends a 2-rank job with an error naming it", "[parallel]") {
  check_damaged_token_ends_job("cpu");
}

TEST_CASE("a node that dies ends the other node's job with an error within the timeout", "[parallel]") {
  TempDir dir;
  const auto tokens = prepare_tokens(dir);
  const int inspect_port = listen_port(3);  // node 1 serves listen_port(4)
  const auto config = dir.write("job.toml", job_toml(dir, tokens, 2, "killed", 100000, 5, inspect_port));
  for (int victim : {1, 0}) {
    SECTION("node " + std::to_string(victim) + " killed") {
      const auto rdzv = "127.0.0.1:" + std::to_string(listen_port(1 + victim));
      auto args = [&](int node) {
        return std::vector<std::string>{troupe_binary(), "train", "--config", config, "--nnodes", "2",
                                        "--node-rank", std::to_string(node), "--rdzv", rdzv};
      };
      ChildProcess dies(args(victim));
      ChildProcess lives(args(1 - victim));
      // Node 0 logs the steps: once training runs, kill the victim.
      std::string seen;
      REQUIRE((victim == 0 ? dies : lives).wait_for_line("step:     3", seen));
      // Node 0's endpoint shows the whole job: node 1's ranks arrive over CAF every second.
      httplib::Client node0_endpoint("127.0.0.1", inspect_port);
      std::set<std::string> remote;
      std::string last_answer;
      for (int i = 0; i < 50 && remote.size() < 2; ++i) {
        auto res = node0_endpoint.Get("/api/status");
        last_answer = res ? std::to_string(res->status) : httplib::to_string(res.error());
        if (res && res->status == 200) {
          const auto status = nlohmann::json::parse(res->body);
          for (const auto& a : status["actors"]) {
            last_answer += " " + a["name"].get<std::string>() + "@" + a["node"].dump();
            if (a["node"] == 1 && a["kind"] == "stage") remote.insert(a["name"].get<std::string>());
          }
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
      INFO("node 0's endpoint at " << inspect_port << " answered: " << last_answer);
      CHECK(remote == std::set<std::string>{"stage[2]", "stage[3]"});
      dies.signal(SIGKILL);
      const auto killed = std::chrono::steady_clock::now();
      std::string out;
      const int code = lives.wait(60, out);
      const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - killed).count();
      INFO(seen << out);
      CHECK(code == 1);
      // Whichever comes first names the problem: the lost node, or the broken collective.
      CHECK_THAT(out, Catch::Contains(victim == 1 ? "a rank on another node is gone" : "lost node 0") ||
                          (Catch::Contains("gloo group") && Catch::Contains("failed")));
      // The lost node is named by its rank and host (node 1's by node 0; node 0's address by node 1).
      if (victim == 1 && out.find("a rank on another node is gone") != std::string::npos)
        CHECK_THAT(out, Catch::Contains("lost node 1 (host "));
      if (victim == 0 && out.find("lost node 0") != std::string::npos) CHECK_THAT(out, Catch::Contains("lost node 0 (127.0.0.1:"));
      CHECK(took < 5 + 20);  // the collective timeout plus shutdown
      std::string ignored;
      dies.wait(5, ignored);
    }
  }
}

TEST_CASE("parallelize: every trained tensor's placement carries the model's tensor-parallel split and FSDP's",
          "[parallel]") {
  // One rank: tp and dp_shard are one part each, so the splits change no box, but they are there
  // for the checkpoint, the norm and the parallelisms to come to read.
  for (const std::string family : {"llama3", "qwen3"}) {
    INFO(family);
    const auto arch = models::model_spec(family).configure("debugmodel", {{"n_layers", "2"}});
    auto model = arch->build(at::TensorOptions().dtype(at::kFloat), 32);
    config::JobConfig cfg;
    cfg.training.seq_len = 32;
    const auto dims = parallel::ParallelDims::resolve(cfg.parallelism, 1);
    const auto rendezvous = comm::Rendezvous::in_process(std::chrono::seconds(30));
    for (int shard_alone : {0, 1}) {
      INFO("sharded alone: " << shard_alone);
      parallel::RankContext rank{0, 0, 1, shard_alone ? rendezvous : nullptr, shard_alone, nullptr};
      const auto p = parallel::parallelize(*model, *arch, std::nullopt, cfg, rank, dims, "cpu", at::kFloat, at::kFloat);
      std::map<std::string, const parallel::Placement*> by_name;
      for (const auto& t : p.trained) by_name[t.name] = &t.placement;
      auto split_of = [&](const std::string& name, parallel::MeshDim d) -> int64_t {
        for (const auto& s : by_name.at(name)->splits)
          if (s.mesh == std::vector{d}) return s.dim;
        return -1;
      };
      CHECK(split_of("layers.0.attention.wq.weight", parallel::MeshDim::tp) == 0);
      CHECK(split_of("layers.1.feed_forward.w2.weight", parallel::MeshDim::tp) == 1);
      CHECK(split_of("tok_embeddings.weight", parallel::MeshDim::tp) == 0);
      CHECK(split_of("norm.weight", parallel::MeshDim::tp) == -1);
      if (family == "qwen3") CHECK(split_of("layers.0.attention.q_norm.weight", parallel::MeshDim::tp) == -1);
      CHECK(split_of("layers.0.attention.wq.weight", parallel::MeshDim::dp_shard) == (shard_alone ? 0 : -1));
      for (const auto& t : p.trained) {
        INFO(t.name);
        CHECK(t.placement.box() == checkpoint::whole_box(t.placement.global_shape));
        CHECK(t.placement.saved_by(parallel::DeviceMesh(dims, 0)));
      }
      CHECK(p.norm_groups.size() == static_cast<size_t>(shard_alone));
    }
  }
  // Two splits compose: tp cuts dim 0 in two, FSDP cuts the half it holds in three.
  const auto nested = parallel::Placement::whole({12, 4})
                          .split(parallel::MeshDim::tp, 0, 1, 2)
                          .split(parallel::MeshDim::dp_shard, 0, 2, 3)
                          .box();
  CHECK(nested.offsets == std::vector<int64_t>{10, 0});
  CHECK(nested.lengths == std::vector<int64_t>{2, 4});
}

TEST_CASE("a node that never joins is named by node 0, which waited for it", "[parallel]") {
  TempDir dir;
  const auto tokens = prepare_tokens(dir);
  const auto config = dir.write("job.toml", job_toml(dir, tokens, 2, "alone", 5, 5, listen_port(5)));
  ChildProcess node0({troupe_binary(), "train", "--config", config, "--nnodes", "2", "--node-rank", "0", "--rdzv",
                      "127.0.0.1:" + std::to_string(listen_port(6)), "--comm.init_timeout_seconds", "3"});
  std::string out;
  const int code = node0.wait(60, out);
  INFO(out);
  CHECK(code == 1);
  CHECK_THAT(out, Catch::Contains("[nodes that never joined: 1]"));
}

TEST_CASE("nodes started with different configs both stop at rendezvous, naming the keys and the nodes",
          "[parallel]") {
  TempDir dir;
  const auto tokens = prepare_tokens(dir);
  const auto config = dir.write("job.toml", job_toml(dir, tokens, 2, "differ", 5, 5));
  const auto rdzv = "127.0.0.1:" + std::to_string(listen_port(7));
  auto args = [&](int node, std::vector<std::string> extra) {
    std::vector<std::string> a{troupe_binary(), "train", "--config", config, "--nnodes", "2",
                               "--node-rank", std::to_string(node), "--rdzv", rdzv};
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  };
  const auto started = std::chrono::steady_clock::now();
  // A node-local key (where it writes) may differ; what is trained may not.
  ChildProcess node0(args(0, {}));
  ChildProcess node1(args(1, {"--optimizer.lr", "0.5", "--training.seq_len", "16", "--job.dump_folder",
                              dir.file("elsewhere")}));
  std::string out0, out1;
  const int code0 = node0.wait(60, out0), code1 = node1.wait(60, out1);
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  INFO(out0 << "\n---\n" << out1);
  CHECK(code0 == runtime::exit_code::bad_config);
  CHECK(code1 == runtime::exit_code::bad_config);
  for (const auto* out : {&out0, &out1}) {
    CHECK_THAT(*out, Catch::Contains("the nodes were started with different configs") &&
                         Catch::Contains("optimizer.lr = ") && Catch::Contains("training.seq_len = 32 on node 0, 16 on node 1 (host "));
    CHECK_THAT(*out, !Catch::Contains("job.dump_folder ="));
  }
  CHECK(took < 30);
}

TEST_CASE("gloo communicator: ranks that disagree on a collective's size end with an error, not an abort",
          "[parallel]") {
  // (A broadcast into a larger buffer passes Gloo unnoticed: the config check at rendezvous is
  // what keeps the nodes' jobs the same.)
  for (const std::string op : {"all_reduce", "all_gather", "reduce_scatter"}) {
    INFO(op);
    const auto child = run_in_child([&] {
      runtime::install_crash_report();
      std::string error;
      try {
        on_ranks(2, [&](int r, comm::CommunicatorPtr c) {
          const int64_t n = r == 0 ? 4 : 8;
          auto t = at::ones({n});
          if (op == "all_reduce") c->all_reduce(t, comm::ReduceOp::sum)->wait();
          if (op == "reduce_scatter") c->reduce_scatter(at::empty({n / 2}), t, comm::ReduceOp::sum)->wait();
          if (op == "all_gather") c->all_gather(at::empty({2 * n}), t)->wait();
        }, std::chrono::seconds(5));
      } catch (const std::exception& e) {
        error = e.what();
      }
      std::cerr << "caught: " << error << std::endl;
      _exit(error.empty() ? 0 : 7);
    });
    INFO(child.stderr_text);
    CHECK(!WIFSIGNALED(child.wait_status));
    REQUIRE(WIFEXITED(child.wait_status));
    // Gloo finds the mismatch on its network thread: a clear line and exit 1.
    CHECK(WEXITSTATUS(child.wait_status) == runtime::exit_code::failed);
    CHECK_THAT(child.stderr_text, Catch::Contains("troupe: the ranks disagree on the size of a collective") &&
                                      Catch::Contains("Received data size doesn't match"));
  }
}

TEST_CASE("tensor parallelism (sequence parallel, loss parallel) of 2 and 4 ranks, with FSDP, a pipeline and AC, "
          "asynchronous or not, trains Llama 3, Qwen3, Qwen3 MoE and DeepSeek V3 as one rank does",
          "[layouts]") {
  TempDir dir;
  const auto tokens = prepare_tokens(dir);
  const std::string family =
      GENERATE(std::string("llama3"), std::string("qwen3"), std::string("qwen3_moe"), std::string("deepseek_v3"));
  INFO(family);
  auto with_family = [&](config::JobConfig c) {
    c.model.name = family;
    c.model.dimensions = {{"n_layers", "4", "test"}};
    // GQA, 16 q heads over 2 kv heads: under tp 4 each kv head is held by the 2 ranks it serves.
    if (family == "qwen3") c.model.dimensions.push_back({"n_kv_heads", "2", "test"});
    // The experts' hidden width split over tp, every tp rank routing the whole sequence; the
    // sequence-wise balance loss (the same whichever rank holds a sequence) and the bias moving.
    if (family == "qwen3_moe" || family == "deepseek_v3")
      for (const auto& [key, value] : {std::pair{"aux_loss_coeff", "0.01"}, {"aux_loss_per_sequence", "true"},
                                       {"load_balance_coeff", "0.01"}})
        c.model.dimensions.push_back({key, value, "test"});
    // Latent attention: q from its own latent too (wq_a whole, wq_b by heads).
    if (family == "deepseek_v3") c.model.dimensions.push_back({"q_lora_rank", "64", "test"});
    c.training.steps = 10;
    c.checkpoint.interval = 5;
    c.validation.enable = false;
    return c;
  };
  const auto one_cfg = with_family(dp_job(dir, tokens, 1, 1, "one"));
  const auto one = run_with_timeout(one_cfg);
  REQUIRE(one.steps.size() == 10);
  CHECK(one.steps.back().loss < one.steps.front().loss - 0.3);
  const auto reference = final_model(one_cfg);
  auto layout = [&](const std::string& name, int ranks, int dp, int replicate, int pp, int tp, bool async = false) {
    auto cfg = with_family(pp > 1 ? pp_job(dir, tokens, pp * dp, pp, "1F1B", name) : dp_job(dir, tokens, dp, replicate, name));
    cfg.job.local_ranks = ranks;
    cfg.parallelism.tensor_parallel_degree = tp;
    cfg.parallelism.enable_async_tensor_parallel = async;
    return cfg;
  };
  struct Layout {
    const char* name;
    int ranks, dp, replicate, pp, tp;
    bool async = false;  // collective matmuls: the same numbers, transfers reordered
    const char* ac = "none";  // activation_checkpoint.mode; "op": selective, the op policy
    bool loss_parallel = true;  // false: each chunk's logits gathered whole (disable_loss_parallel)
  };
  std::vector<Layout> layouts = {{"tp2", 2, 1, 1, 1, 2}, {"tp4", 4, 1, 1, 1, 4}, {"fsdp2_tp2", 4, 2, 1, 1, 2},
                                 {"pp2_tp2", 4, 1, 1, 2, 2}, {"tp4_async", 4, 1, 1, 1, 4, true}};
  if (family == "llama3") {
    layouts.push_back({"hsdp2x1_tp2", 4, 2, 2, 1, 2});
    layouts.push_back({"pp2_fsdp2_tp2", 8, 2, 1, 2, 2});
    layouts.push_back({"fsdp2_tp2_async", 4, 2, 1, 1, 2, true});
    layouts.push_back({"fsdp2_tp2_full_ac", 4, 2, 1, 1, 2, false, "full"});
    layouts.push_back({"tp2_op_ac", 2, 1, 1, 1, 2, false, "op"});
    layouts.push_back({"tp2_async_op_ac", 2, 1, 1, 1, 2, true, "op"});
    layouts.push_back({"fsdp2_tp2_whole_logits", 4, 2, 1, 1, 2, false, "none", false});
  }
  if (family == "qwen3") layouts.push_back({"tp4_whole_logits", 4, 1, 1, 1, 4, false, "none", false});
  if (family == "deepseek_v3")  // latent attention and the shared experts under the op policy
    layouts.push_back({"tp2_op_ac", 2, 1, 1, 1, 2, false, "op"});
  for (const auto& l : layouts) {
    SECTION(l.name) {
      auto cfg = layout(l.name, l.ranks, l.dp, l.replicate, l.pp, l.tp, l.async);
      cfg.activation_checkpoint.mode = std::string(l.ac) == "op" ? "selective" : l.ac;
      if (std::string(l.ac) == "op") cfg.activation_checkpoint.selective_ac_option = "op";
      cfg.parallelism.disable_loss_parallel = !l.loss_parallel;
      const auto run = run_with_timeout(cfg);
      INFO(run.message);
      REQUIRE(run.exit_code == 0);
      check_same_run(run, one);
      check_same_model(final_model(cfg), reference);
    }
  }
  if (family != "deepseek_v3")  // its layouts above are enough: its checkpoints move as the others'
  SECTION("a checkpoint of FSDP 2 x TP 2 resumes exactly there, on one rank, as FSDP 4 and as TP 4") {
    const auto saved = layout("saved", 4, 2, 1, 1, 2);
    REQUIRE(run_with_timeout(saved).exit_code == 0);
    const auto step5 = checkpoint::checkpoint_folder(saved) + "/step-5";
    struct Resume {
      const char* name;
      int ranks, dp, tp;
    };
    for (const auto& r : {Resume{"same", 4, 2, 2}, Resume{"one", 1, 1, 1}, Resume{"fsdp4", 4, 4, 1},
                          Resume{"tp4", 4, 1, 4}}) {
      INFO("resumed as " << r.name);
      auto cfg = layout(std::string("resumed_") + r.name, r.ranks, r.dp, 1, 1, r.tp);
      cfg.checkpoint.initial_load_path = step5;
      cfg.checkpoint.initial_load_model_only = false;
      const auto run = run_with_timeout(cfg);
      INFO(run.message);
      check_same_run(run, one, 6);
      check_same_model(final_model(cfg), reference);
    }
  }
}

TEST_CASE("tensor and context parallelism with multi-token prediction: DeepSeek V3 with two prediction blocks (MoE, "
          "the balance loss, the bias) under tp 2, FSDP 2 x tp 2, cp 2 (allgather, ring) and cp 2 x tp 2 trains as "
          "one rank does",
          "[layouts]") {
  TempDir dir;
  const auto tokens = prepare_tokens(dir);
  // The sequence-wise balance loss (the same whichever data-parallel rank holds a sequence) is
  // left out beside cp, whose rank's loss is over its part of each sequence (docs/design.md).
  auto with_mtp = [&](config::JobConfig c, int ranks, int tp, int cp, const char* method, bool balance_loss) {
    c.model.name = "deepseek_v3";
    c.model.dimensions = {{"n_layers", "3", "test"},
                          {"mtp_layers", "2", "test"},
                          {"aux_loss_coeff", balance_loss ? "0.01" : "0", "test"},
                          {"aux_loss_per_sequence", "true", "test"},
                          {"load_balance_coeff", "0.01", "test"}};
    c.job.local_ranks = ranks;
    c.parallelism.tensor_parallel_degree = tp;
    c.parallelism.context_parallel_degree = cp;
    c.parallelism.context_parallel_rotate_method = method;
    c.training.steps = 10;
    c.checkpoint.interval = 5;
    c.validation.enable = false;
    return c;
  };
  struct Layout {
    const char* name;
    int ranks, dp, tp, cp;
    const char* method;
  };
  for (const auto& l : {Layout{"tp2", 2, 1, 2, 1, "allgather"}, Layout{"fsdp2_tp2", 4, 2, 2, 1, "allgather"},
                        Layout{"cp2_allgather", 2, 1, 1, 2, "allgather"}, Layout{"cp2_ring", 2, 1, 1, 2, "ring"},
                        Layout{"cp2_tp2", 4, 1, 2, 2, "allgather"}}) {
    SECTION(l.name) {
      const auto one_cfg = with_mtp(dp_job(dir, tokens, 1, 1, "one"), 1, 1, 1, "allgather", l.cp == 1);
      const auto one = run_with_timeout(one_cfg);
      REQUIRE(one.steps.size() == 10);
      CHECK(one.steps.back().loss < one.steps.front().loss - 0.3);
      const auto reference = final_model(one_cfg);
      const auto cfg = with_mtp(dp_job(dir, tokens, l.dp, 1, l.name), l.ranks, l.tp, l.cp, l.method, l.cp == 1);
      const auto run = run_with_timeout(cfg);
      INFO(run.message);
      REQUIRE(run.exit_code == 0);
      check_same_run(run, one);
      check_same_model(final_model(cfg), reference);
    }
  }
}

TEST_CASE("context parallelism (allgather and ring; causal and block_causal) of 2 and 4 ranks, with FSDP, TP, a "
          "pipeline and activation checkpointing, trains and validates as one rank does, and its checkpoints move to "
          "and from one rank",
          "[layouts]") {
  TempDir dir;
  const auto tokens = prepare_tokens(dir, short_documents(dir));
  const std::string mask = GENERATE(std::string("causal"), std::string("block_causal"));
  INFO(mask);
  auto with_mask = [&](config::JobConfig c) {
    c.training.attention_mask = mask;
    c.model.dimensions = {{"n_layers", "4", "test"}};
    c.training.steps = 10;
    c.checkpoint.interval = 5;
    return with_validation(c, tokens);
  };
  const auto one_cfg = with_mask(dp_job(dir, tokens, 1, 1, "one"));
  const auto one = run_with_timeout(one_cfg);
  REQUIRE(one.steps.size() == 10);
  const auto reference = final_model(one_cfg);
  struct Layout {
    const char* name;
    int ranks, dp, pp, tp, cp;
    const char* method;
    const char* ac = "none";  // activation_checkpoint.mode; "op": selective, the op policy
  };
  auto layout = [&](const Layout& l) {
    auto cfg = with_mask(l.pp > 1 ? pp_job(dir, tokens, l.pp * l.dp, l.pp, "1F1B", l.name) : dp_job(dir, tokens, l.dp, 1, l.name));
    cfg.model.dimensions = {{"n_layers", "4", "test"}};
    cfg.job.local_ranks = l.ranks;
    cfg.parallelism.tensor_parallel_degree = l.tp;
    cfg.parallelism.context_parallel_degree = l.cp;
    cfg.parallelism.context_parallel_rotate_method = l.method;
    if (std::string(l.ac) == "op") {
      cfg.activation_checkpoint.mode = "selective";
      cfg.activation_checkpoint.selective_ac_option = "op";
    } else {
      cfg.activation_checkpoint.mode = l.ac;
    }
    return cfg;
  };
  std::vector<Layout> layouts = {{"cp2_allgather", 2, 1, 1, 1, 2, "allgather"}, {"cp2_ring", 2, 1, 1, 1, 2, "ring", "full"},
                                 {"cp4_allgather", 4, 1, 1, 1, 4, "allgather", "op"}, {"cp4_ring", 4, 1, 1, 1, 4, "ring"}};
  if (mask == "causal") {
    layouts.push_back({"fsdp2_cp2_ring", 4, 2, 1, 1, 2, "ring"});
    layouts.push_back({"pp2_cp2_allgather", 4, 1, 2, 1, 2, "allgather"});
  } else {
    layouts.push_back({"cp2_tp2_ring", 4, 1, 1, 2, 2, "ring"});
    layouts.push_back({"pp2_cp2_ring", 4, 1, 2, 1, 2, "ring"});
  }
  for (const auto& l : layouts) {
    SECTION(l.name) {
      const auto cfg = layout(l);
      const auto run = run_with_timeout(cfg);
      INFO(run.message);
      REQUIRE(run.exit_code == 0);
      check_same_run(run, one);
      check_same_model(final_model(cfg), reference);
      check_same_validation(cfg, one_cfg);
    }
  }
  SECTION("a CP 2 checkpoint resumes on one rank, and one rank's resumes as CP 2") {
    const auto saved = layout({"saved", 2, 1, 1, 1, 2, "ring"});
    REQUIRE(run_with_timeout(saved).exit_code == 0);
    for (const auto& [from, as] : {std::pair<std::string, Layout>{checkpoint::checkpoint_folder(saved), {"resumed_one", 1, 1, 1, 1, 1, "ring"}},
                                   {checkpoint::checkpoint_folder(one_cfg), {"resumed_cp2", 2, 1, 1, 1, 2, "allgather"}}}) {
      INFO("resumed as " << as.name);
      auto cfg = layout(as);
      cfg.checkpoint.initial_load_path = from + "/step-5";
      cfg.checkpoint.initial_load_model_only = false;
      const auto run = run_with_timeout(cfg);
      INFO(run.message);
      check_same_run(run, one, 6);
      check_same_model(final_model(cfg), reference);
    }
  }
}

TEST_CASE("context parallelism: a sequence that does not cut into 2 x cp chunks, an unknown "
          "rotate method or mask, and block_causal without an EOS token are refused up front",
          "[parallel]") {
  config::JobConfig c;
  c.model.tokenizer_path = source_dir() + "/data/kjv/tokenizer.json";
  c.training.seq_len = 36;
  c.parallelism.context_parallel_degree = 4;
  CHECK_THROWS_WITH(train::check_layout(c, 4, *train::job_model(c)),
                    Catch::Contains("training.seq_len = 36 must be a multiple of 2 x parallelism.context_parallel_degree = 8"));
  c.training.seq_len = 36;
  c.parallelism.context_parallel_degree = 2;
  c.parallelism.tensor_parallel_degree = 4;
  CHECK_THROWS_WITH(train::check_layout(c, 8, *train::job_model(c)),
                    Catch::Contains("training.seq_len = 36 must be a multiple of parallelism.context_parallel_degree x "
                                    "parallelism.tensor_parallel_degree = 8"));
  c.training.seq_len = 32;
  c.parallelism.tensor_parallel_degree = 1;
  CHECK_THROWS_WITH(config::load_job_config("", {{"parallelism.context_parallel_rotate_method", "alltoall"}}),
                    Catch::Contains("parallelism.context_parallel_rotate_method") && Catch::Contains("alltoall"));
  CHECK_THROWS_WITH(config::load_job_config("", {{"training.attention_mask", "sliding"}}),
                    Catch::Contains("training.attention_mask") && Catch::Contains("sliding"));
  // A batch without documents (a tokenizer without EOS leaves them out) under block_causal.
  config::JobConfig one;
  one.job.device = "cpu";
  one.model.tokenizer_path = source_dir() + "/data/kjv/tokenizer.json";
  one.training.seq_len = 16;
  one.training.local_batch_size = 1;
  one.training.attention_mask = "block_causal";
  train::Trainer trainer(one, train::job_model(one));
  auto batch = std::make_shared<data::Batch>();
  batch->tokens = torch::zeros({1, 16}, torch::kLong);
  batch->targets = torch::zeros({1, 16}, torch::kLong);
  CHECK_THROWS_WITH(trainer.step(1, {batch}), Catch::Contains("training.attention_mask = \"block_causal\" needs "
                                                              "documents, but the tokenizer"));
}

TEST_CASE("tensor parallelism: a degree that does not divide the heads (or, with fewer kv heads, is no multiple of "
          "them), or a family without a plan, is refused up front",
          "[parallel]") {
  config::JobConfig c;
  c.model.tokenizer_path = source_dir() + "/data/kjv/tokenizer.json";
  c.training.seq_len = 32;
  c.parallelism.tensor_parallel_degree = 3;
  CHECK_THROWS_WITH(train::check_layout(c, 3, *train::job_model(c)),
                    Catch::Contains("parallelism.tensor_parallel_degree = 3 does not divide the model's n_heads (16)"));
  c.parallelism.tensor_parallel_degree = 2;
  c.training.seq_len = 33;
  CHECK_THROWS_WITH(train::check_layout(c, 2, *train::job_model(c)),
                    Catch::Contains("training.seq_len = 33 must be a multiple of parallelism.tensor_parallel_degree"));
  // Fewer kv heads than ranks: each held by tp / n_kv_heads ranks, when that divides.
  c.model.name = "qwen3";
  c.model.dimensions = {{"n_kv_heads", "2", "test"}};
  c.training.seq_len = 32;
  c.parallelism.tensor_parallel_degree = 8;
  CHECK_NOTHROW(train::check_layout(c, 8, *train::job_model(c)));
  c.model.dimensions = {{"n_kv_heads", "4", "test"}};
  c.parallelism.tensor_parallel_degree = 6;
  c.training.seq_len = 36;
  CHECK_THROWS_WITH(train::check_layout(c, 6, *train::job_model(c)),
                    Catch::Contains("parallelism.tensor_parallel_degree = 6 is not a multiple of the model's n_kv_heads (4)"));
  c.parallelism.tensor_parallel_degree = 2;
  c.training.seq_len = 32;
  c.model.dimensions.clear();
  c.model.name = "qwen3_moe";
  c.parallelism.expert_parallel_degree = 2;
  CHECK_NOTHROW(train::check_layout(c, 4, *train::job_model(c)));  // etp 1: an ep group of whole tp groups
  c.parallelism.tensor_parallel_degree = 4;
  CHECK_THROWS_WITH(train::check_layout(c, 4, *train::job_model(c)),
                    Catch::Contains("parallelism.expert_parallel_degree = 2 must be a multiple of "
                                    "parallelism.tensor_parallel_degree = 4"));
  c.parallelism.tensor_parallel_degree = 2;
  c.parallelism.expert_parallel_degree = 1;

  // Expert parallelism: a degree that does not divide the experts (8), a dense model, a mesh
  // without room for it.
  c.parallelism.tensor_parallel_degree = 1;
  c.parallelism.expert_parallel_degree = 3;
  CHECK_THROWS_WITH(train::check_layout(c, 3, *train::job_model(c)),
                    Catch::Contains("parallelism.expert_parallel_degree = 3 does not divide the model's 8 routed experts"));
  c.parallelism.expert_parallel_degree = 2;
  c.model.name = "llama3";
  CHECK_THROWS_WITH(train::check_layout(c, 2, *train::job_model(c)),
                    Catch::Contains("parallelism.expert_parallel_degree = 2: the model has no routed experts"));
  c.model.name = "qwen3_moe";
  c.parallelism.pipeline_parallel_degree = 2;
  CHECK_THROWS_WITH(train::check_layout(c, 2, *train::job_model(c)),
                    Catch::Contains("parallelism.expert_parallel_degree 2 does not divide data_parallel_shard_degree"));
}

namespace {
// One rank whose all-to-alls log when they are issued and waited for (and return what was sent).
class LoggedRows : public models::RankGroup {
 public:
  explicit LoggedRows(std::vector<std::string>& log) : log_(log) {}
  int rank() const override { return 0; }
  int size() const override { return 1; }
  at::Tensor all_gather(const at::Tensor& in) override { return in.unsqueeze(0); }
  at::Tensor reduce_scatter(const at::Tensor& in) override { return in[0]; }
  void all_reduce(at::Tensor&, bool) override {}
  std::unique_ptr<Transfer> ring_shift(const at::Tensor&) override { throw std::logic_error("not here"); }
  std::unique_ptr<Transfer> start_all_to_all(const at::Tensor& in, const std::vector<int64_t>&,
                                             const std::vector<int64_t>&) override {
    struct Logged : Transfer {
      Logged(std::vector<std::string>& log, at::Tensor t) : log(log), t(std::move(t)) {}
      at::Tensor wait() override {
        log.push_back("wait");
        return t;
      }
      std::vector<std::string>& log;
      at::Tensor t;
    };
    log_.push_back("send");
    return std::make_unique<Logged>(log_, in.clone());
  }

 private:
  std::vector<std::string>& log_;
};

// Passes its input through; its backward logs.
struct LoggedBackward : torch::autograd::Function<LoggedBackward> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, int64_t log) {
    ctx->saved_data["log"] = log;
    return x.clone();
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    reinterpret_cast<std::vector<std::string>*>(ctx->saved_data["log"].toInt())->push_back("between's backward");
    return {grads[0], at::Tensor()};
  }
};
}  // namespace

TEST_CASE("an exchange of rows differentiates the work done while the rows travel while their gradient travels "
          "back",
          "[parallel]") {
  std::vector<std::string> log;
  LoggedRows group(log);
  const auto x = at::randn({4, 3}, at::kDouble).requires_grad_(), y = at::randn({2, 3}, at::kDouble).requires_grad_();
  at::Tensor side;
  const auto arrived = models::exchange_rows(x, {4}, {4}, group, [&] {
    log.push_back("between");
    side = LoggedBackward::apply(y, reinterpret_cast<int64_t>(&log)) * 2;
  });
  CHECK(log == std::vector<std::string>{"send", "between", "wait"});
  log.clear();
  (arrived.pow(2).sum() + side.sum()).backward();
  CHECK(log == std::vector<std::string>{"send", "between's backward", "wait"});
  CHECK(at::allclose(x.grad(), 2 * x));
  CHECK(at::allclose(y.grad(), at::full_like(y, 2.0)));
}

TEST_CASE("expert parallelism: a MoE block over 2 and 4 Gloo ranks computes as one rank does, a router that sends "
          "every token to one rank's experts included",
          "[parallel]") {
  // Dropless: each rank's tokens reach their experts on whichever rank holds them and come back,
  // so the outputs, the inputs' gradients and each expert's gradient (every rank's tokens added)
  // are the one-rank block's, in fp64. The skewed router leaves every rank but the first with
  // nothing to compute.
  const int n = GENERATE(2, 4);
  const bool skewed = GENERATE(false, true);
  INFO(n << " ranks" << (skewed ? ", skewed" : ""));
  models::DecoderArgs a;
  a.dim = 16;
  a.moe_inter_dim = 8;
  a.num_experts = 8;
  a.top_k = 2;
  a.num_shared_experts = 1;
  a.route_norm = true;
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  auto make = [&] {
    torch::manual_seed(11);
    auto m = std::make_shared<models::MoE>(a, f64, nullptr);
    torch::NoGradGuard no_grad;
    for (auto& p : m->parameters()) p.normal_(0, 0.3);
    if (skewed) m->router->gate->weight.narrow(0, 0, 2).normal_(0, 0.01).add_(at::ones({2, a.dim}, f64)), m->router->gate->weight.narrow(0, 2, 6).zero_();
    return m;
  };
  torch::manual_seed(3);
  const auto x = at::rand({n, 6, a.dim}, f64).add_(0.5);  // positive: the skewed logits favour experts 0 and 1
  const auto w = at::randn({n, 6, a.dim}, f64);
  const auto one = make();
  const auto x_one = x.clone().requires_grad_();
  const auto out_one = one->forward(x_one, models::UnitBatch{}, 0);
  (out_one * w).sum().backward();

  std::vector<std::shared_ptr<models::MoE>> blocks;  // made here: the generator is the process's
  for (int r = 0; r < n; ++r) blocks.push_back(make());
  on_ranks(n, [&](int r, comm::CommunicatorPtr c) {
    auto group = parallel::make_rank_group(c);
    auto m = blocks[r];
    const int64_t local = a.num_experts / n;
    {
      torch::NoGradGuard no_grad;
      for (auto* t : {&m->experts->w1, &m->experts->w2, &m->experts->w3}) t->set_data(t->narrow(0, r * local, local).clone());
    }
    m->ep = group.get();
    models::AuxValues aux;
    models::UnitBatch batch;
    batch.aux = &aux;
    const auto x_r = x.narrow(0, r, 1).clone().requires_grad_();
    const auto out = m->forward(x_r, batch, 0);
    (out * w.narrow(0, r, 1)).sum().backward();
    RANK_CHECK(at::allclose(out, out_one.narrow(0, r, 1), 1e-10, 1e-12));
    RANK_CHECK(at::allclose(x_r.grad(), x_one.grad().narrow(0, r, 1), 1e-10, 1e-12));
    // A rank no token reached has no gradient for its experts: zeros.
    auto grad = [](const at::Tensor& t) { return t.grad().defined() ? t.grad() : at::zeros_like(t); };
    RANK_CHECK(at::allclose(grad(m->experts->w1), one->experts->w1.grad().narrow(0, r * local, local), 1e-10, 1e-12));
    RANK_CHECK(at::allclose(grad(m->experts->w2), one->experts->w2.grad().narrow(0, r * local, local), 1e-10, 1e-12));
    const auto received = aux.values().at("ep.rank" + std::to_string(r) + ".tokens").item<double>();
    if (skewed && r > 0) RANK_CHECK(received == 0);
    if (skewed && r == 0) RANK_CHECK(received == 2.0 * 6 * n);  // every token's two copies
    RANK_CHECK(aux.values().count("ep.rank" + std::to_string(r) + ".all_to_all_bytes") == 1);
  });
}

TEST_CASE("sequence parallelism's gather and reduce-scatter over a communicator move each batch row in place and "
          "equal the rank-major path, over 3 Gloo ranks",
          "[parallel]") {
  constexpr int n = 3;
  const int64_t B = 3, s = 2, D = 5;
  // Rank r's part [B, s, D] and its whole-sequence partial sums [B, n * s, D].
  auto part_of = [](int r) { return at::arange(B * s * D, at::kFloat).view({B, s, D}) + 100 * r; };
  auto partial_of = [](int r) { return at::arange(B * n * s * D, at::kFloat).view({B, n * s, D}) * (r + 1); };
  std::vector<at::Tensor> gathered(n), gathered_default(n), summed(n), summed_default(n);
  on_ranks(n, [&](int r, comm::CommunicatorPtr c) {
    auto group = parallel::make_rank_group(c);
    gathered[r] = group->all_gather_sequence(part_of(r));
    gathered_default[r] = group->models::RankGroup::all_gather_sequence(part_of(r));
    summed[r] = group->reduce_scatter_sequence(partial_of(r));
    summed_default[r] = group->models::RankGroup::reduce_scatter_sequence(partial_of(r));
  });
  std::vector<at::Tensor> parts;
  for (int r = 0; r < n; ++r) parts.push_back(part_of(r));
  const auto whole = at::cat(parts, 1);  // [B, n * s, D], rank r's part at positions r*s..
  auto sum = partial_of(0);
  for (int r = 1; r < n; ++r) sum = sum + partial_of(r);
  for (int r = 0; r < n; ++r) {
    INFO("rank " << r);
    CHECK(at::equal(gathered[r], whole));
    CHECK(at::equal(gathered_default[r], whole));
    CHECK(at::equal(summed[r], sum.narrow(1, r * s, s)));
    CHECK(at::equal(summed_default[r], sum.narrow(1, r * s, s)));
  }
}

TEST_CASE("TP's gathered projections that keep the rank's part (at once, and asynchronous TP's around the "
          "ring) equal gathering then projecting, and projecting then scattering, with their gradients, in "
          "fp64 over 2 and 4 Gloo ranks",
          "[parallel]") {
  const int n = GENERATE(2, 4);
  INFO(n << " ranks");
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  torch::manual_seed(5);
  const int64_t B = 2, s = 3, D = 8, out_a = 6, out_b = 4, wide = 10;
  // Every rank's input part and weights: rank r's rows of the column-parallel weights, and its
  // columns of the row-parallel one.
  const auto x = at::randn({n, B, s, D}, f64), wa = at::randn({n, out_a, D}, f64), wb = at::randn({n, out_b, D}, f64);
  const auto z = at::randn({n, B, n * s, wide}, f64), wz = at::randn({n, D, wide}, f64);
  const auto up_a = at::randn({n, B, n * s, out_a}, f64), up_b = at::randn({n, B, n * s, out_b}, f64);
  const auto up_y = at::randn({n, B, s, D}, f64);
  enum Mode { plain, kept_part, ring };
  std::vector<std::vector<std::vector<at::Tensor>>> results(n);  // per rank, per mode
  on_ranks(n, [&](int r, comm::CommunicatorPtr c) {
    auto group = parallel::make_rank_group(c);
    auto run = [&](Mode mode) {
      auto xr = x[r].clone().requires_grad_(), ar = wa[r].clone().requires_grad_(), br = wb[r].clone().requires_grad_();
      auto zr = z[r].clone().requires_grad_(), wr = wz[r].clone().requires_grad_();
      std::vector<at::Tensor> ab;
      at::Tensor y;
      if (mode == ring) {
        ab = models::gathered_linear(xr, {ar, br}, *group, nullptr, true, {});
        y = models::linear_scattered(zr, wr, *group, nullptr, {});
      } else if (mode == kept_part) {
        ab = models::gathered_linear(xr, {ar, br}, *group, nullptr, false, {});
        y = models::scatter_sequence_sum(at::linear(zr, wr), *group);
      } else {
        const auto gathered = models::gather_sequence(xr, *group);
        ab = {at::linear(gathered, ar), at::linear(gathered, br)};
        y = models::scatter_sequence_sum(at::linear(zr, wr), *group);
      }
      ((ab[0] * up_a[r]).sum() + (ab[1] * up_b[r]).sum() + (y * up_y[r]).sum()).backward();
      return std::vector<at::Tensor>{ab[0], ab[1], y, xr.grad(), ar.grad(), br.grad(), zr.grad(), wr.grad()};
    };
    results[r] = {run(plain), run(kept_part), run(ring)};
  });
  for (int r = 0; r < n; ++r)
    for (int mode : {kept_part, ring})
      for (size_t i = 0; i < results[r][plain].size(); ++i) {
        INFO("rank " << r << (mode == ring ? ", ring" : ", at once") << ", result " << i
                     << " (a, b, y, dx, dwa, dwb, dz, dwz)");
        const auto &want = results[r][plain][i], &got = results[r][mode][i];
        REQUIRE(got.sizes() == want.sizes());
        CHECK(at::allclose(got, want, 1e-10, 1e-12));
      }
}

TEST_CASE("expert parallelism: ep 2, ep 4, ep 2 x fsdp 2, tp 2 x ep 2 and pp 2 x ep 2 train Qwen3 MoE and DeepSeek V3 "
          "as one rank does; an ep 4 checkpoint resumes on ep 2 and on one rank",
          "[layouts]") {
  // The debug flavors (8 routed experts) cut to 4 blocks.
  // Under ep the routed experts' gradients sum every ep rank's tokens (the all-to-all's backward)
  // and are divided by ep: the average over the data-parallel ranks, as the other parameters'.
  const std::string family = GENERATE(std::string("qwen3_moe"), std::string("deepseek_v3"));
  INFO(family);
  TempDir dir;
  const auto tokens = prepare_tokens(dir);
  auto moe = [&](config::JobConfig c, int64_t ep) {
    c.model.name = family;
    c.model.flavor = "debugmodel";
    // Both balancing methods: the bias and the sequence-wise loss (the same whichever rank holds a
    // sequence).
    c.model.dimensions = {{"n_layers", "4", "test"},
                          {"load_balance_coeff", "0.01", "test"},
                          {"aux_loss_coeff", "0.01", "test"},
                          {"aux_loss_per_sequence", "true", "test"}};
    c.parallelism.expert_parallel_degree = ep;
    c.training.steps = 10;
    c.checkpoint.interval = 5;
    return with_validation(c, tokens);  // evaluation exchanges tokens too
  };
  // A layout's run against a one-rank run: losses, final parameters, validation.
  auto run_as = [](const config::JobConfig& cfg, const auto& want, const auto& want_model,
                   const config::JobConfig& want_cfg) {
    INFO(cfg.job.dump_folder);
    const auto run = run_with_timeout(cfg);
    INFO(run.message);
    check_same_run(run, want);
    check_same_model(final_model(cfg), want_model);
    check_same_validation(cfg, want_cfg);
    return run;
  };
  const auto one_cfg = moe(dp_job(dir, tokens, 1, 1, "one"), 1);
  const auto one = run_with_timeout(one_cfg);
  REQUIRE(one.steps.size() == 10);
  const auto reference = final_model(one_cfg);
  SECTION("ep 2 (full AC), ep 4 and ep 2 x fsdp 2 (op AC); ep 4's step 5 resumed on ep 2 and on one rank") {
    for (const auto& [ranks, ep] : {std::pair{2, 2}, std::pair{4, 4}, std::pair{4, 2}}) {
      auto cfg = moe(dp_job(dir, tokens, ranks, 1, "ep" + std::to_string(ep) + "_of" + std::to_string(ranks)), ep);
      // Recomputed forwards exchange their tokens again, in the same order on every ep rank.
      if (ranks == 2) cfg.activation_checkpoint.mode = "full";
      if (ranks == 4 && ep == 2) cfg.activation_checkpoint.mode = "selective", cfg.activation_checkpoint.selective_ac_option = "op";
      INFO(cfg.job.dump_folder);
      const auto run = run_as(cfg, one, reference, one_cfg);
      // Each ep rank reports the rows its experts computed and the bytes it moved.
      REQUIRE(!run.steps.empty());
      std::map<std::string, double> aux(run.steps.back().aux.begin(), run.steps.back().aux.end());
      double rows = 0;
      for (int r = 0; r < ep; ++r) {
        CHECK(aux.count("ep.rank" + std::to_string(r) + ".all_to_all_bytes") == 1);
        rows += aux["ep.rank" + std::to_string(r) + ".tokens"];
      }
      CHECK(rows > 0);
      if (ranks != 4 || ep != 4) continue;
      // HF export from the ep 4 run's last checkpoint: the one-rank run's weights (Qwen3 MoE: the
      // DeepSeek debug flavor routes by softmax, which HF's DeepseekV3 cannot).
      auto export_hf = [&](const config::JobConfig& c, const std::string& name) {
        const auto hf = dir.file(name);
        ChildProcess p({troupe_binary(), "checkpoint", "export", "--hf", hf, "--checkpoint",
                        checkpoint::checkpoint_folder(c)});
        std::string out;
        const int code = p.wait(120, out);
        INFO(out);
        REQUIRE(code == 0);
        return checkpoint::read_safetensors(hf + "/model.safetensors");
      };
      const auto hf_ep = family == "qwen3_moe" ? export_hf(cfg, "hf_ep4") : checkpoint::TensorMap{};
      const auto hf_one = family == "qwen3_moe" ? export_hf(one_cfg, "hf_one") : checkpoint::TensorMap{};
      REQUIRE(hf_ep.size() == hf_one.size());
      for (const auto& [name, t] : hf_one) {
        INFO(name);
        REQUIRE(hf_ep.count(name) == 1);
        CHECK(at::allclose(hf_ep.at(name).to(at::kFloat), t.to(at::kFloat), 1e-2, 1e-3));  // bf16 exports
      }
      for (const auto& [to_ranks, to_ep] : {std::pair{2, 2}, std::pair{1, 1}}) {
        auto resumed = moe(dp_job(dir, tokens, to_ranks, 1, "from_ep4_" + std::to_string(to_ranks)), to_ep);
        resumed.checkpoint.initial_load_path = checkpoint::checkpoint_folder(cfg) + "/step-5";
        resumed.checkpoint.initial_load_model_only = false;
        INFO("resumed on " << to_ranks);
        check_same_run(run_with_timeout(resumed), one, 6);
        check_same_model(final_model(resumed), reference);
      }
    }
  }
  SECTION("cp 2 x ep 2 (the ep group is the cp group) and hsdp 2 x ep 2") {
    auto cp = moe(dp_job(dir, tokens, 1, 1, "cp_ep"), 2);
    cp.job.local_ranks = 2;
    cp.parallelism.context_parallel_degree = 2;
    cp.parallelism.context_parallel_rotate_method = "ring";
    // A cp rank's balance loss is over its part of each sequence, another loss than one rank's:
    // off here, and in a one-rank run to compare with.
    auto one_without = moe(dp_job(dir, tokens, 1, 1, "one_without_loss"), 1);
    for (auto* c : {&cp, &one_without})
      for (auto& d : c->model.dimensions)
        if (d.key == "aux_loss_coeff") d.value = "0";
    const auto one_cp = run_with_timeout(one_without);
    const auto hsdp = moe(dp_job(dir, tokens, 4, 2, "hsdp_ep"), 2);
    for (const auto& [cfg, want, want_model] :
         {std::tuple{cp, one_cp, final_model(one_without)}, std::tuple{hsdp, one, reference}}) {
      INFO(cfg.job.dump_folder);
      const auto run = run_with_timeout(cfg);
      INFO(run.message);
      check_same_run(run, want);
      check_same_model(final_model(cfg), want_model);
    }
  }
  SECTION("tp 2 x ep 2 and fsdp 2 x tp 2 x ep 4 (torchtitan's etp 1: whole experts over ep ranks taken from the tp "
          "ranks, each tp rank routing its own part of the sequence)") {
    // A tp rank's balance loss is over its part of each sequence, as a cp rank's: off here.
    auto one_without = moe(dp_job(dir, tokens, 1, 1, "one_without_loss_tp"), 1);
    auto etp = [&](int dp, int64_t ep, const std::string& name) {
      auto c = moe(dp_job(dir, tokens, dp, 1, name), ep);
      c.job.local_ranks = 2 * dp;
      c.parallelism.tensor_parallel_degree = 2;
      return c;
    };
    std::vector<config::JobConfig> layouts{etp(1, 2, "tp2_ep2"), etp(2, 4, "fsdp2_tp2_ep4")};
    for (auto* c : {&one_without, &layouts[0], &layouts[1]})
      for (auto& d : c->model.dimensions)
        if (d.key == "aux_loss_coeff") d.value = "0";
    const auto want = run_with_timeout(one_without);
    const auto want_model = final_model(one_without);
    for (const auto& cfg : layouts) run_as(cfg, want, want_model, one_without);
  }
  SECTION("pp 2 x ep 2 (ZBVZeroBubble: the backward's halves each pass the all-to-alls)") {
    auto cfg = moe(pp_job(dir, tokens, 4, 2, "ZBVZeroBubble", "pp_ep"), 2);
    cfg.validation.enable = false;
    const auto run = run_with_timeout(cfg);
    INFO(run.message);
    check_same_run(run, one);
    check_same_model(final_model(cfg), reference);
  }
}

TEST_CASE("expert parallelism on CUDA: the dispatch and combine over a one-rank replica group compute as the experts "
          "alone, in fp32 and bf16, an expert with no tokens included",
          "[gpu]") {
  // The rank's side of the exchange on the GPU kernels: counts exchanged, copies permuted, sent
  // (the replica's copy on its stream), regrouped by expert, computed, and back.
  REQUIRE(torch::cuda::is_available());
  models::DecoderArgs a;
  a.dim = 64;
  a.moe_inter_dim = 32;
  a.num_experts = 8;
  a.top_k = 2;
  const auto cuda = torch::TensorOptions().device(torch::kCUDA);
  torch::manual_seed(5);
  models::GroupedExperts experts(a, cuda.dtype(torch::kFloat), nullptr);
  {
    torch::NoGradGuard no_grad;
    for (auto* w : {&experts.w1, &experts.w2, &experts.w3}) w->normal_(0, 0.1);
  }
  auto choice = torch::randint(0, a.num_experts - 1, {100, a.top_k}, cuda.dtype(torch::kLong));
  choice.masked_fill_(choice == 3, a.num_experts - 1);  // expert 3 gets nothing
  const auto perm = kernels::permutation(choice, torch::bincount(choice.view({-1}), {}, a.num_experts));
  auto group = parallel::make_rank_group(comm::make_replica_communicator("ep[replicas]", 1, 0));
  for (auto dtype : {torch::kFloat, torch::kBFloat16}) {
    INFO(c10::toString(dtype));
    const auto flat = torch::randn({100, a.dim}, cuda.dtype(dtype));
    const auto dy = torch::randn({100 * a.top_k, a.dim}, cuda.dtype(dtype));
    auto run = [&](bool over_ranks) {
      for (auto* w : {&experts.w1, &experts.w2, &experts.w3}) w->mutable_grad() = at::Tensor();
      auto x = flat.clone().requires_grad_();
      models::AuxValues aux;
      auto y = over_ranks ? models::routed_over_ranks(x, perm, experts, false, *group, &aux)
                          : experts.forward(x, perm, false);
      y.backward(dy);
      if (over_ranks) CHECK(aux.values().at("ep.rank0.tokens").item<double>() == 100.0 * a.top_k);
      return std::vector<at::Tensor>{y.to(torch::kFloat).cpu(), x.grad().to(torch::kFloat).cpu(), experts.w1.grad().cpu(),
                                     experts.w2.grad().cpu()};
    };
    const auto want = run(false), got = run(true);
    for (size_t k = 0; k < want.size(); ++k) {
      INFO("tensor " << k);
      const double tol = dtype == torch::kFloat ? 1e-5 : 2e-2;  // bf16: a sum in another order rounds apart
      CHECK(torch::allclose(got[k], want[k], tol, tol));
    }
  }
}
