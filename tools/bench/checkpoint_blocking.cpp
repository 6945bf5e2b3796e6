// How long a checkpoint holds up training: the host snapshot alone (what the stage does before
// the next step in the async modes) against a synchronous save of the same state (snapshot,
// write, fsync, commit), on the configured model and device.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <vector>

#include "bench/benchmarks.h"
#include "checkpoint/checkpoint_folder.h"
#include "train/trainer_checkpoint.h"
#include "checkpoint/write_step.h"
#include "data/tokenizer.h"
#include "runtime/remove_tree.h"
#include "train/job_model.h"
#include "train/trainer.h"

namespace troupe::bench {

namespace {

using clock = std::chrono::steady_clock;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

double seconds_since(clock::time_point t0) { return std::chrono::duration<double>(clock::now() - t0).count(); }

}  // namespace

int checkpoint_blocking(const config::JobConfig& cfg, int rounds) {
  train::Trainer trainer(cfg, train::job_model(cfg));
  const auto folder = (std::filesystem::path(cfg.job.dump_folder) / "bench-checkpoint").string();
  train::SnapshotRequest request;
  request.step = 1;
  checkpoint::SnapshotBuffers pageable(/*reuse=*/true, /*pin=*/false), pinned_buffers(/*reuse=*/true, /*pin=*/true);
  train::snapshot_trainer(trainer, cfg, request, pageable);  // each mode allocates its buffers once
  train::snapshot_trainer(trainer, cfg, request, pinned_buffers);
  std::vector<double> sync, fresh, reused, pinned;
  uint64_t bytes = 0;
  for (int r = 0; r < rounds; ++r) {
    const auto t0 = clock::now();
    checkpoint::SnapshotBuffers once(/*reuse=*/false);
    const auto dir = checkpoint::write_step(folder, *train::snapshot_trainer(trainer, cfg, request, once));
    sync.push_back(seconds_since(t0));
    bytes = checkpoint::read_metadata(dir).ranks.at(0).bytes;
    checkpoint::SnapshotBuffers per_save(/*reuse=*/false);
    fresh.push_back(train::snapshot_trainer(trainer, cfg, request, per_save)->blocked_seconds);
    reused.push_back(train::snapshot_trainer(trainer, cfg, request, pageable)->blocked_seconds);
    pinned.push_back(train::snapshot_trainer(trainer, cfg, request, pinned_buffers)->blocked_seconds);
  }
  runtime::remove_tree(folder);
  const double s = median(sync);
  std::printf("\ncheckpoint blocking: %s, %.1f MB of model + optimizer state, device %s, %d rounds (medians)\n",
              cfg.model.flavor.c_str(), static_cast<double>(bytes) / 1e6, trainer.device().c_str(), rounds);
  std::printf("| save | training blocked per checkpoint (ms) | / synchronous save |\n|---|---|---|\n");
  std::printf("| disabled (synchronous: snapshot + write + fsync + commit) | %.1f | 1.000 |\n", 1e3 * s);
  std::printf("| async (reused pageable host buffers) | %.1f | %.3f |\n", 1e3 * median(reused), median(reused) / s);
  std::printf("| async_with_pinned_mem (reused buffers, pinned on GPU) | %.1f | %.3f |\n", 1e3 * median(pinned),
              median(pinned) / s);
  std::printf("| (for reference: fresh pageable buffers per save) | %.1f | %.3f |\n", 1e3 * median(fresh),
              median(fresh) / s);
  std::printf("target: async blocked time <= 0.10 of the synchronous save\n");
  return 0;
}

}  // namespace troupe::bench
