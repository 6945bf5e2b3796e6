// Where a training step's GPU time goes: drives Trainers directly (no actors) on random tokens,
// one thread per local rank (job.local_ranks; FSDP over NCCL when there are several), times the
// steps, then records a few with libtorch's Kineto profiler and prints, per GPU, the kernels by
// time per step and how much of the step the compute stream kept busy (communication kernels
// run beside it and are counted apart). Optionally writes the Chrome trace.
#include <torch/csrc/autograd/profiler_kineto.h>
#include <torch/torch.h>

#include <algorithm>
#include <barrier>
#include <chrono>
#include <cstdio>
#include <future>
#include <atomic>
#include <malloc.h>
#include <map>
#include <optional>
#include <thread>

#ifdef TROUPE_WITH_CUDA
#include <torch/csrc/cuda/memory_snapshot.h>
#endif

#include <fstream>

#include "bench/benchmarks.h"
#include "comm/rendezvous.h"
#include "data/batch.h"
#include "runtime/error_text.h"
#include "train/job_model.h"
#include "train/trainer.h"

namespace troupe::bench {

namespace {

// The heap's bytes in use (small chunks and mmapped blocks): a CPU rank's tensors, as glibc sees them.
int64_t heap_in_use() {
  const auto m = mallinfo2();
  return static_cast<int64_t>(m.uordblks + m.hblkhd);
}

// The most heap in use while it lives, sampled every 200 us: CPU tensors have no allocator statistics.
class HeapPeak {
 public:
  HeapPeak() : peak_(heap_in_use()), sampler_([this] {
    while (!done_) {
      peak_ = std::max(peak_.load(), heap_in_use());
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  }) {}
  ~HeapPeak() {
    done_ = true;
    sampler_.join();
  }
  int64_t peak() const { return std::max(peak_.load(), heap_in_use()); }

 private:
  std::atomic<bool> done_{false};
  std::atomic<int64_t> peak_;
  std::thread sampler_;
};

// One more step with the CUDA caching allocator's history on (every allocation with its C++ stack),
// written as its pickled snapshot (tools/bench/memory_peak.py tells what is live at the peak).
template <class Step>
void record_memory_history(const std::string& path, bool first, std::barrier<>& phase, Step&& step) {
#ifdef TROUPE_WITH_CUDA
  phase.arrive_and_wait();
  if (first)
    torch::cuda::_record_memory_history(/*enabled=*/true, /*record_context=*/true, /*trace_alloc_max_entries=*/2'000'000,
                                        /*trace_alloc_record_context=*/true, /*record_cpp_context=*/true);
  phase.arrive_and_wait();
  step();
  phase.arrive_and_wait();
  if (first) {
    std::ofstream out(path, std::ios::binary);
    out << torch::cuda::_memory_snapshot_pickled();
    if (!out) throw std::runtime_error("--memory-history: cannot write " + path);
    torch::cuda::_record_memory_history(false);
  }
  phase.arrive_and_wait();
#else
  (void)path, (void)first, (void)phase, (void)step;
  throw std::invalid_argument("--memory-history needs a CUDA build");
#endif
}

struct Total {
  double ns = 0;
  int64_t calls = 0;
};

bool is_communication(const std::string& kernel) { return kernel.rfind("nccl", 0) == 0; }

struct Span {
  int64_t begin, end;
  std::string name;
};

struct Gap {
  double ms;
  std::string before, after;
};

// One sweep over kernel spans in time order: how long at least one ran (ns), and the stretches
// in which none did, with the kernels on either side.
struct Coverage {
  double busy_ns = 0;
  std::vector<Gap> gaps;
};

Coverage cover(std::vector<Span> spans) {
  Coverage c;
  if (spans.empty()) return c;
  std::sort(spans.begin(), spans.end(), [](const Span& a, const Span& b) { return a.begin < b.begin; });
  int64_t reach = spans.front().begin;
  const std::string* last = &spans.front().name;
  for (const auto& s : spans) {
    if (s.begin > reach) c.gaps.push_back({static_cast<double>(s.begin - reach) / 1e6, *last, s.name});
    if (s.end <= reach) continue;
    c.busy_ns += static_cast<double>(s.end - std::max(s.begin, reach));
    reach = s.end;
    last = &s.name;
  }
  return c;
}

// The longest stretches in which no compute kernel ran: where the GPU waited for the host or for
// communication.
void print_gaps(std::vector<Gap> gaps, int64_t steps) {
  std::sort(gaps.begin(), gaps.end(), [](const Gap& a, const Gap& b) { return a.ms > b.ms; });
  std::printf("longest compute gaps over the %lld steps (ms: after -> before):\n", static_cast<long long>(steps));
  for (size_t i = 0; i < std::min<size_t>(gaps.size(), 10); ++i)
    std::printf("  %.3f: %s -> %s\n", gaps[i].ms, gaps[i].before.substr(0, 60).c_str(), gaps[i].after.substr(0, 60).c_str());
}

void report(const std::vector<torch::autograd::profiler::KinetoEvent>& events, int device, int64_t steps,
            double wall_ms_per_step) {
  std::map<std::string, Total> kernels;
  std::map<int64_t, double> stream_ns;  // kernel time per stream
  std::vector<std::pair<Span, int64_t>> spans;
  double communication = 0;
  for (const auto& e : events) {
    if (e.deviceType() != c10::DeviceType::CUDA || e.deviceIndex() != device) continue;
    const auto name = e.name();
    const auto begin = static_cast<int64_t>(e.startNs()), end = begin + static_cast<int64_t>(e.durationNs());
    auto& t = kernels[name.substr(0, 110)];
    t.ns += static_cast<double>(e.durationNs());
    ++t.calls;
    spans.push_back({{begin, end, name}, e.deviceResourceId()});
    if (!is_communication(name)) stream_ns[e.deviceResourceId()] += static_cast<double>(e.durationNs());
  }
  // The compute stream is the one with the most non-NCCL kernel time; the others carry
  // transfers (NCCL's, or a replica group's copies) and FSDP's side work.
  int64_t compute_stream = 0;
  double most = -1;
  for (const auto& [stream, ns] : stream_ns)
    if (ns > most) most = ns, compute_stream = stream;
  std::vector<Span> compute, on_compute_stream, all;
  for (const auto& [span, stream] : spans) {
    all.push_back(span);
    if (is_communication(span.name)) communication += static_cast<double>(span.end - span.begin);
    else compute.push_back(span);
    if (stream == compute_stream && !is_communication(span.name)) on_compute_stream.push_back(span);
  }
  const auto per_step = [&](double ns) { return ns / 1e6 / static_cast<double>(steps); };
  const auto computing = cover(compute);
  std::printf("\ncuda:%d, %lld profiled steps: wall %.2f ms/step; compute busy %.2f ms/step (idle %.2f); "
              "communication kernels %.2f ms/step; any kernel %.2f ms/step; compute stream busy %.2f ms/step "
              "(other streams' kernels excluded)\n",
              device, static_cast<long long>(steps), wall_ms_per_step, per_step(computing.busy_ns),
              wall_ms_per_step - per_step(computing.busy_ns), per_step(communication), per_step(cover(all).busy_ns),
              per_step(cover(on_compute_stream).busy_ns));
  print_gaps(computing.gaps, steps);
  std::vector<std::pair<std::string, Total>> sorted(kernels.begin(), kernels.end());
  std::sort(sorted.begin(), sorted.end(), [](const auto& a, const auto& b) { return a.second.ns > b.second.ns; });
  std::printf("| ms/step | calls/step | GPU activity |\n|---|---|---|\n");
  for (const auto& [name, t] : sorted)
    if (per_step(t.ns) >= 0.05)
      std::printf("| %.3f | %.1f | %s |\n", per_step(t.ns), static_cast<double>(t.calls) / steps, name.c_str());
}

}  // namespace

int step_profile(const config::JobConfig& cfg, int64_t vocab, int64_t warmup, int64_t steps,
                 const std::string& trace_path, int alone_as, int64_t document_tokens,
                 const std::string& memory_history_path) {
  const int ranks = train::local_rank_count(cfg);
  if (alone_as > 0 && ranks > 1) throw std::invalid_argument("--rank-of profiles one rank: set job.local_ranks 1");
  if (alone_as > 1 && cfg.parallelism.pipeline_parallel_degree > 1)
    throw std::invalid_argument("--rank-of: replicas cannot stand in for a pipeline's other stages");
  auto rendezvous = ranks > 1 || alone_as == 1 ? comm::Rendezvous::in_process(std::chrono::minutes(5)) : nullptr;
  const auto B = cfg.training.local_batch_size, S = cfg.training.seq_len;
  const double cp = static_cast<double>(cfg.parallelism.context_parallel_degree);  // a cp rank's tokens: 1/cp
  std::barrier phase(ranks);
  double loop_seconds = 0, profiled_seconds = 0;
  int64_t peak_active = 0, peak_reserved = 0;  // rank 0's, over the plain loop
  int64_t heap_before = 0, heap_peak = 0;  // the process's, around the plain loop (CPU)
  std::unique_ptr<torch::autograd::profiler::ProfilerResult> result;
  namespace prof = torch::autograd::profiler;
  using torch::profiler::impl::ActivityType;
  const torch::profiler::impl::ProfilerConfig config(torch::profiler::impl::ProfilerState::KINETO);
  const std::set<ActivityType> activities{ActivityType::CPU, ActivityType::CUDA};

  auto run_rank_steps = [&](int r) {
    // Recorded as in a job of several ranks (--comm.trace_buf_size 0: not), so its cost shows.
    const bool recorded = cfg.comm.trace_buf_size > 0 && (ranks > 1 || alone_as == 1);
    auto recorder = recorded ? std::make_shared<comm::FlightRecorder>(cfg.comm.trace_buf_size) : nullptr;
    parallel::RankContext rank{r, r, ranks, rendezvous, alone_as == 1, recorder};
    if (alone_as > 1) rank.world = alone_as, rank.replicas = true;
    train::Trainer trainer(cfg, train::job_model(cfg, vocab), rank);
    auto tokens = torch::randint(0, vocab, {B, S + 1}, torch::kLong);
    auto batch = std::make_shared<data::Batch>();
    batch->tokens = tokens.narrow(1, 0, S).contiguous();
    batch->targets = tokens.narrow(1, 1, S).contiguous();
    if (document_tokens > 0) batch->documents = random_documents(B, S, document_tokens);
    const std::shared_ptr<const data::Batch> b = std::move(batch);
    int64_t step = 0;
    double seconds = 0;
    std::optional<HeapPeak> heap;
    for (int64_t i = 0; i < warmup + steps; ++i) {
      if (i == warmup && r == 0 && train::resolve_device(cfg.job.device) != "cuda") {
        heap_before = heap_in_use();  // the model, its optimizer state and the warm-up's leftovers
        heap.emplace();
      }
      const auto t0 = std::chrono::steady_clock::now();
      const auto stats = trainer.step(++step, {b});  // ends by reading the loss back: the step is finished
      if (i >= warmup) seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (r == 0) {
        peak_active = std::max(peak_active, stats.gpu_peak_active_bytes);
        peak_reserved = std::max(peak_reserved, stats.gpu_peak_reserved_bytes);
      }
    }
    if (r == 0) loop_seconds = seconds;
    if (!memory_history_path.empty()) record_memory_history(memory_history_path, r == 0, phase, [&] { trainer.step(++step, {b}); });
    if (heap) heap_peak = heap->peak();
    heap.reset();
    phase.arrive_and_wait();
    // CUDA activity is recorded process-wide, so rank 0's profiler sees every GPU.
    if (r == 0) {
      prof::prepareProfiler(config, activities);
      prof::enableProfiler(config, activities);
    }
    phase.arrive_and_wait();
    const auto t0 = std::chrono::steady_clock::now();
    for (int64_t i = 0; i < steps; ++i) trainer.step(++step, {b});
    phase.arrive_and_wait();
    if (r == 0) {
      profiled_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      result = prof::disableProfiler();
    }
  };
  auto run_rank = [&](int r) {
    try {
      run_rank_steps(r);
    } catch (const std::exception& e) {
      // Said at once: the other ranks may wait out their collective timeout before this one's
      // future is read, and they must not wait for it at the barriers.
      std::fprintf(stderr, "rank %d failed: %s\n", r, runtime::error_text(e).c_str());
      phase.arrive_and_drop();
      throw;
    }
  };
  std::vector<std::future<void>> threads;
  for (int r = 0; r < ranks; ++r) threads.push_back(std::async(std::launch::async, run_rank, r));
  for (auto& t : threads) t.get();

  const auto alone = alone_as == 1   ? std::string(" under FSDP over a one-rank group")
                    : alone_as > 1 ? " as rank 0 of " + std::to_string(alone_as) + " (replicas stand in for the others)"
                                         : std::string();
  constexpr double GiB = 1024.0 * 1024.0 * 1024.0;
  std::printf("%d rank(s)%s, plain loop: %.2f ms/step, %.0f tokens/s per rank over %lld steps; "
              "rank 0's peak GPU memory %.2f GiB active, %.2f GiB reserved\n",
              ranks, alone.c_str(), 1e3 * loop_seconds / steps, static_cast<double>(B * S * steps) / cp / loop_seconds,
              static_cast<long long>(steps), static_cast<double>(peak_active) / GiB,
              static_cast<double>(peak_reserved) / GiB);
  if (heap_peak > 0)
    std::printf("heap in use: %.3f GiB before the timed steps, %.3f GiB at their peak (+%.3f GiB)\n",
                static_cast<double>(heap_before) / GiB, static_cast<double>(heap_peak) / GiB,
                static_cast<double>(heap_peak - heap_before) / GiB);
  if (train::resolve_device(cfg.job.device) == "cuda")
    for (int d = 0; d < ranks; ++d) report(result->events(), d, steps, 1e3 * profiled_seconds / steps);
  if (!trace_path.empty()) result->save(trace_path);
  return 0;
}

}  // namespace troupe::bench
