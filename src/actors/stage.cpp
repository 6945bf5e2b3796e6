#include "actors/stage.h"

#include "parallel/device_mesh.h"
#include "actors/actor_failure.h"

#include <chrono>
#include <deque>
#include <optional>

#include "actors/checkpoint_writer_protocol.h"
#include "actors/data_loader_protocol.h"
#include "actors/stage_protocol.h"
#include "train/trainer_checkpoint.h"
#include "data/batch.h"
#include "data/batch_source.h"
#include "runtime/error_text.h"
#include "runtime/failpoint.h"
#include "actors/status_board.h"
#include "train/trainer.h"

namespace troupe::actors {

namespace {

using clock = std::chrono::steady_clock;

struct pending_step {
  int64_t step;
  clock::time_point asked;
  caf::typed_response_promise<train::StepStats> promise;
};

struct stage_state {
  std::shared_ptr<actors::StatusEntry> status;
  std::unique_ptr<train::Trainer> trainer;
  std::string init_error;
  caf::actor loader;
  std::deque<batch_handle> ready;
  std::optional<pending_step> pending;
  train::Restored restored;
  data::DataPosition consumed;  // after the last batch a step took (the loader is ahead)
  std::unique_ptr<checkpoint::SnapshotBuffers> snapshot_buffers;
  // Validation (only when validation.enable): every pass rewinds to `validation_start`, so each
  // one sees the same batches and losses are comparable across steps (and across runs).
  std::unique_ptr<data::BatchSource> validation;
  data::DataPosition validation_start;
  std::string memory_hint;  // what an allocation failure adds: the keys that size the buffers
  int64_t node = 0;
};

// Batches received and not yet consumed, for the inspection console.
void publish_held_bytes(stage_state& st) {
  uint64_t bytes = 0;
  for (const auto& b : st.ready) bytes += b->tokens.nbytes() + b->targets.nbytes();
  st.status->set_bytes_in_flight(bytes);
}

// A failed request: the status shows the error; the reply names this stage and why (the
// coordinator, which asked, says what failed: "step 3 failed: stage[1]: ...").
caf::error failed(actors::StatusEntry& status, const std::exception& e, const std::string& memory_hint) {
  const auto text = runtime::error_text(e) + (runtime::out_of_memory(e) ? memory_hint : "");
  status.set_error(text);
  return caf::make_error(caf::sec::runtime_error, status.name() + ": " + text);
}

void run_if_ready(caf::stateful_actor<stage_state>* self) {
  auto& st = self->state;
  if (!st.pending) return;
  const auto needed = static_cast<size_t>(st.trainer->micro_batches_per_step());
  if (st.ready.size() < needed) {
    st.status->set_state("waiting-data");
    return;
  }
  std::vector<batch_handle> micro(st.ready.begin(), st.ready.begin() + static_cast<long>(needed));
  st.ready.erase(st.ready.begin(), st.ready.begin() + static_cast<long>(needed));
  publish_held_bytes(st);
  st.consumed = micro.back()->next;
  // Re-grant the credits now so the loader prepares the next step while this one computes.
  self->send(st.loader, credit_atom::value, static_cast<int64_t>(needed), caf::actor_cast<caf::actor>(self));
  auto job = std::move(*st.pending);
  st.pending.reset();
  st.status->set_state("computing");
  st.status->set_step(job.step);
  const double waited = std::chrono::duration<double>(clock::now() - job.asked).count();
  try {
    auto stats = st.trainer->step(job.step, micro);
    stats.data_wait_seconds = waited;
    stats.node = st.node;
    st.status->set_state("idle");
    job.promise.deliver(stats);
  } catch (const std::exception& e) {
    job.promise.deliver(failed(*st.status, e, st.memory_hint));
  }
}

caf::behavior stage(caf::stateful_actor<stage_state>* self, config::JobConfig cfg, models::ArchitecturePtr model,
                    parallel::RankContext rank, data::DataShare share, caf::actor loader, caf::actor supervisor,
                    std::shared_ptr<actors::StatusBoard> board) {
  auto& st = self->state;
  const int rank_id = rank.rank;
  st.status = board->enroll("stage[" + std::to_string(rank_id) + "]");
  end_on_exception(self, "stage[" + std::to_string(rank_id) + "]");
  st.status->set_flight_recorder(rank.flight_recorder);
  st.loader = loader;
  st.node = board->node();
  st.memory_hint = " (the buffers are sized by training.seq_len = " + std::to_string(cfg.training.seq_len) +
                   " and training.local_batch_size = " + std::to_string(cfg.training.local_batch_size) +
                   ": lower either, or set activation_checkpoint.mode)";
  try {
    runtime::failpoint("stage.start", rank_id);
    st.status->set_state("building");
    const int world = rank.world;
    st.status->set_state(world > 1 ? "connecting" : "building");
    st.status->set_detail("mesh: " + parallel::DeviceMesh(parallel::ParallelDims::resolve(cfg.parallelism, world), rank_id)
                                         .coordinates());
    st.trainer = std::make_unique<train::Trainer>(cfg, std::move(model), std::move(rank));
    st.trainer->on_micro_batch([status = st.status](int64_t m) { status->set_micro_batch(m); });
    st.trainer->on_pipeline_action([status = st.status](const char* what, int64_t micro_batch) {
      status->set_state(what);
      status->set_micro_batch(micro_batch);
    });
    st.trainer->on_activity([status = st.status, rank_id](const char* what, int64_t unit) {
      status->set_activity(what, unit);
      runtime::failpoint("stage.activity", rank_id);
    });
    st.snapshot_buffers = std::make_unique<checkpoint::SnapshotBuffers>(
        cfg.checkpoint.async_mode != "disabled", cfg.checkpoint.async_mode == "async_with_pinned_mem");
    if (cfg.validation.enable) {
      st.status->set_state("tokenizing-validation");
      st.validation = std::make_unique<data::BatchSource>(data::DatasetSpec::validation(cfg), share);
      st.validation_start = st.validation->position();
    }
    st.status->set_state("loading-checkpoint");
    st.restored = train::restore_trainer(*st.trainer, cfg, rank_id, world);
    // Sent before the first credit, so the loader's first batch is the one after the checkpoint.
    if (st.restored.dataloader) self->send(loader, seek_atom::value, *st.restored.dataloader);
    st.status->set_state("idle");
    // Two steps of batches in flight: one being consumed, one being prepared.
    self->send(loader, credit_atom::value, 2 * st.trainer->micro_batches_per_step(),
               caf::actor_cast<caf::actor>(self));
  } catch (const std::exception& e) {
    st.trainer.reset();  // a failed restore leaves nothing half-loaded to train on
    st.init_error = runtime::error_text(e) + (runtime::out_of_memory(e) ? st.memory_hint : "");
    st.status->set_error(st.init_error);
    self->send(supervisor, failure_atom::value, "stage: " + st.init_error);
  }
  return {
      [=](batch_atom, batch_handle batch) {
        self->state.status->on_message(self);
        self->state.ready.push_back(std::move(batch));
        publish_held_bytes(self->state);
        run_if_ready(self);
      },
      [=](step_atom, int64_t step) -> caf::typed_response_promise<train::StepStats> {
        auto& s = self->state;
        s.status->on_message(self);
        auto promise = self->make_response_promise<train::StepStats>();
        if (!s.trainer) {
          promise.deliver(caf::make_error(caf::sec::runtime_error, "stage failed to start: " + s.init_error));
          return promise;
        }
        s.pending = pending_step{step, clock::now(), promise};
        run_if_ready(self);
        return promise;
      },
      [=](validate_atom, int64_t step) -> caf::result<double> {
        auto& s = self->state;
        s.status->on_message(self);
        if (!s.trainer) return caf::make_error(caf::sec::runtime_error, "stage failed to start: " + s.init_error);
        if (!s.validation) return caf::make_error(caf::sec::runtime_error, "validation is not enabled");
        s.status->set_state("validating");
        try {
          s.validation->seek(s.validation_start);
          double sum = 0;
          for (int64_t i = 0; i < cfg.validation.steps; ++i) sum += s.trainer->evaluate(s.validation->next());
          s.status->set_state("idle");
          return sum / static_cast<double>(cfg.validation.steps);
        } catch (const std::exception& e) {
          return failed(*s.status, e, s.memory_hint);
        }
      },
      [=](restored_atom) -> caf::result<int64_t, std::string> {
        auto& s = self->state;
        s.status->on_message(self);
        if (!s.trainer) return caf::make_error(caf::sec::runtime_error, "stage failed to start: " + s.init_error);
        return {s.restored.step, s.restored.message};
      },
      [=](snapshot_atom, int64_t step, const std::string& tmp_dir, bool model_only, const std::string& dtype,
          caf::actor writer) -> caf::result<double> {
        auto& s = self->state;
        s.status->on_message(self);
        if (!s.trainer) return caf::make_error(caf::sec::runtime_error, "stage failed to start: " + s.init_error);
        s.status->set_state("snapshot");
        try {
          auto snap = train::snapshot_trainer(*s.trainer, cfg, {step, tmp_dir, model_only, dtype, rank_id, s.consumed},
                                                   *s.snapshot_buffers);
          s.snapshot_buffers->lend_to(snap);
          const double blocked = snap->blocked_seconds;
          self->send(writer, write_atom::value, snapshot_handle(std::move(snap)),
                     caf::actor_cast<caf::actor>(self->current_sender()));
          s.status->set_state("idle");
          return blocked;
        } catch (const std::exception& e) {
          return failed(*s.status, e, "");
        }
      },
      [=](status_atom) {
        self->state.status->on_message(self);
        return self->state.status->snapshot();
      },
  };
}

}  // namespace

caf::actor spawn_stage(caf::actor_system& sys, const config::JobConfig& cfg, models::ArchitecturePtr model,
                       parallel::RankContext rank, data::DataShare share, caf::actor loader, caf::actor supervisor,
                       std::shared_ptr<actors::StatusBoard> board) {
  return sys.spawn<caf::detached>(stage, cfg, std::move(model), std::move(rank), share, std::move(loader),
                                  std::move(supervisor), std::move(board));
}

}  // namespace troupe::actors
