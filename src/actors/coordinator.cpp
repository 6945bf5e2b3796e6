#include "actors/coordinator.h"
#include "actors/actor_failure.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <optional>
#include <set>
#include <string>

#include "actors/checkpoint_writer_protocol.h"
#include "actors/coordinator_protocol.h"
#include "actors/metrics_sink_protocol.h"
#include "actors/stage_protocol.h"
#include "checkpoint/checkpoint_folder.h"
#include "runtime/failpoint.h"
#include "runtime/exit_codes.h"
#include "actors/status_board.h"

namespace troupe::actors {

namespace {

using clock = std::chrono::steady_clock;

// Why a request failed, as the user reads it: the text a stage or writer replied with (their
// errors carry one line that names them), else CAF's rendering (a timeout, a dead actor).
std::string reason(const caf::error& err) {
  const auto& context = err.context();
  if (err.category() == caf::atom("system") && context.match_elements<std::string>()) return context.get_as<std::string>(0);
  return to_string(err);
}

// A checkpoint between its snapshot and its commit; at most one at a time, so host buffers
// and disk bandwidth go to one step's state.
struct running_save {
  int64_t step = 0;
  std::string tmp_dir;
  std::vector<std::string> shard_records;  // one per rank that has written its shard
  double blocked_seconds = 0;
  clock::time_point started;
  bool snapshot_taken = false;  // the stage's reply and the writers' acknowledgements race
};

struct coordinator_state {
  std::shared_ptr<actors::StatusEntry> status;
  std::vector<caf::actor> stages;  // rank order
  caf::actor sink, supervisor;
  int64_t steps = 0;
  std::string stop_reason;  // non-empty once a stop was requested
  bool started = false, running = false, finished = false;
  clock::time_point step_started;
  std::vector<train::StepStats> history;
  config::CheckpointSection checkpoint;
  std::string checkpoint_folder;
  std::vector<caf::actor> writers;  // per rank; empty when checkpoints are off
  int64_t validation_freq = 0;  // 0: validation is off
  std::optional<running_save> saving;
  std::vector<std::function<void()>> after_save;  // what waits for the running save's commit
  std::shared_ptr<actors::StatusBoard> board;
  bool paused = false, checkpoint_requested = false;
  int64_t last_step = 0;           // the last step that finished
  std::function<void()> held;      // the next step, while paused
};

using self_ptr = caf::stateful_actor<coordinator_state>*;

void log(self_ptr self, const std::string& line) { self->send(self->state.sink, log_atom::value, line); }

// Sends request(i) to every rank and calls done(replies in rank order) once all have answered,
// or fail(error) at the first error.
template <class T, class Request, class Done, class Fail>
void ask_all(self_ptr self, Request request, Done done, Fail fail) {
  const size_t n = self->state.stages.size();
  auto replies = std::make_shared<std::vector<T>>(n);
  auto left = std::make_shared<size_t>(n);
  auto failed = std::make_shared<bool>(false);
  for (size_t i = 0; i < n; ++i)
    request(i).then(
        [=](T reply) {
          (*replies)[i] = std::move(reply);
          if (--*left == 0 && !*failed) done(std::move(*replies));
        },
        [=](caf::error& err) {
          if (*failed) return;
          *failed = true;
          fail(err);
        });
}

// The job's view of a step: the loss, norm and rate are rank 0's (already averaged over the
// data-parallel ranks); work is summed, times and memory are the slowest or largest rank's; the
// units' reports are rank 0's and, for units rank 0 does not run (other pipeline stages), those
// of the first rank that does.
train::StepStats combine(const std::vector<train::StepStats>& ranks) {
  auto out = ranks.front();
  std::set<std::string> reported;
  for (const auto& [name, value] : out.aux) reported.insert(name);
  for (size_t r = 1; r < ranks.size(); ++r) {
    const auto& s = ranks[r];
    for (const auto& [name, value] : s.aux)
      if (reported.insert(name).second) out.aux.emplace_back(name, value);
    out.tokens += s.tokens;
    out.model_flops += s.model_flops;
    out.peak_flops_per_second += s.peak_flops_per_second;
    out.compute_seconds = std::max(out.compute_seconds, s.compute_seconds);
    out.data_wait_seconds = std::max(out.data_wait_seconds, s.data_wait_seconds);
    out.gpu_peak_active_bytes = std::max(out.gpu_peak_active_bytes, s.gpu_peak_active_bytes);
    out.gpu_peak_reserved_bytes = std::max(out.gpu_peak_reserved_bytes, s.gpu_peak_reserved_bytes);
    out.rss_bytes = std::max(out.rss_bytes, s.rss_bytes);
  }
  out.aux_counts.clear();  // the page's, kept per rank (StepRecord)
  out.pipeline.clear();
  return out;
}

// Flushes the metrics first so that nothing logged is lost when the process exits; a save in
// progress is committed first.
void finish(self_ptr self, int exit_code, std::string message) {
  auto& st = self->state;
  if (st.finished) return;
  if (st.saving) {
    st.after_save.push_back([=] { finish(self, exit_code, message); });
    return;
  }
  st.finished = true;
  st.status->set_state("stopping");
  st.board->update_job([](actors::JobStatus& j) { j.state = "stopping"; });
  auto report = [=](bool) {
    auto& s = self->state;
    self->send(s.supervisor, done_atom::value, exit_code, message, s.history);
    s.status->set_state("done");
    s.board->update_job([](actors::JobStatus& j) { j.state = "done"; });
  };
  self->request(st.sink, caf::infinite, flush_atom::value).then(report, [=](caf::error&) { report(false); });
}

void run_after_save(self_ptr self) {
  auto waiting = std::move(self->state.after_save);
  self->state.after_save.clear();
  for (auto& f : waiting) f();
}

void save_failed(self_ptr self, int64_t step, const std::string& why) {
  self->state.saving.reset();
  self->state.after_save.clear();  // nothing continues after a failed save but the finish
  finish(self, runtime::exit_code::failed, "checkpoint at step " + std::to_string(step) + " failed: " + why);
}

void commit_when_complete(self_ptr self) {
  auto& st = self->state;
  if (!st.saving->snapshot_taken || st.saving->shard_records.size() < st.writers.size()) return;
  const auto save = *st.saving;
  self->request(st.writers.front(), caf::infinite, commit_atom::value, save.step, save.tmp_dir, save.shard_records)
      .then(
          [=](const std::string& summary) {
            char line[160];
            std::snprintf(line, sizeof line, "; training blocked %.1f ms, done in %.2f s", 1e3 * save.blocked_seconds,
                          std::chrono::duration<double>(clock::now() - save.started).count());
            log(self, "checkpoint: step " + std::to_string(save.step) + " committed to " + summary + line);
            self->state.board->update_job(
                [&](actors::JobStatus& j) { j.last_checkpoint = "step-" + std::to_string(save.step); });
            self->state.saving.reset();
            run_after_save(self);
          },
          [=](caf::error& err) { save_failed(self, save.step, reason(err)); });
}

// Saves `step`, then calls `then`: once the snapshot is taken with async saves, once the step
// is committed otherwise. The final step is model-only in export_dtype when asked; step 0 (a
// seed) is the initialised model alone.
void save(self_ptr self, int64_t step, std::function<void()> then) {
  auto& st = self->state;
  if (st.saving) {
    st.after_save.push_back([=] { save(self, step, then); });
    return;
  }
  const bool model_only = step == 0 || (step == st.steps && st.checkpoint.last_save_model_only);
  const auto dtype = model_only && step > 0 ? st.checkpoint.export_dtype : std::string();
  if (step == st.steps && !model_only)
    log(self, "checkpoint: step " + std::to_string(step) +
                  " is the last; it keeps the whole training state, so a run with more training.steps continues "
                  "from it (checkpoint.last_save_model_only = true saves the model alone, in export_dtype)");
  st.saving = running_save{step, checkpoint::new_tmp_dir(st.checkpoint_folder, step), {}, 0, clock::now()};
  st.status->set_state("snapshot");
  const auto tmp_dir = st.saving->tmp_dir;
  ask_all<double>(
      self,
      [=](size_t r) {
        return self->request(self->state.stages[r], caf::infinite, snapshot_atom::value, step, tmp_dir, model_only,
                             dtype, self->state.writers[r]);
      },
          [=](std::vector<double> per_rank) {
            const double blocked = *std::max_element(per_rank.begin(), per_rank.end());
            auto& s = self->state;
            char line[96];
            std::snprintf(line, sizeof line, " copied to host in %.1f ms; writing", 1e3 * blocked);
            log(self, "checkpoint: step " + std::to_string(step) + line);
            s.saving->blocked_seconds = blocked;
            s.saving->snapshot_taken = true;
            if (s.checkpoint.async_mode == "disabled") s.after_save.push_back(then);
            commit_when_complete(self);
            if (s.checkpoint.async_mode != "disabled") then();
          },
          [=](caf::error& err) { save_failed(self, step, reason(err)); });
}

// A stop asked during the step saves it too (preemption: SLURM's SIGTERM comes before the kill).
bool save_due(const coordinator_state& st, int64_t step) {
  const bool stopping = !st.stop_reason.empty() && st.checkpoint.save_on_stop;
  return !st.writers.empty() &&
         (st.checkpoint_requested || stopping || step % st.checkpoint.interval == 0 || step == st.steps);
}

void run_step(self_ptr self, int64_t step);

// Validation after `step` when due (every validation.freq steps and after the last), then
// `then`; the next step waits for it, so the loss is the model's as of `step`.
void validate(self_ptr self, int64_t step, std::function<void()> then) {
  auto& st = self->state;
  if (st.validation_freq == 0 || (step % st.validation_freq != 0 && step != st.steps)) return then();
  st.running = true;  // a stop request now ends the run after this, like one during a step
  st.status->set_state("validating");
  ask_all<double>(
      self, [=](size_t r) { return self->request(self->state.stages[r], caf::infinite, validate_atom::value, step); },
          [=](std::vector<double> per_rank) {
            const double loss = per_rank.front();  // every rank's is the data-parallel mean
            self->state.running = false;
            self->send(self->state.sink, validation_atom::value, step, loss);
            then();
          },
          [=](caf::error& err) {
            self->state.running = false;
            finish(self, runtime::exit_code::failed,
                   "validation after step " + std::to_string(step) + " failed: " + reason(err));
          });
}

// After step `step` (and its checkpoint, if any): the next step or the end; held while paused.
void continue_after(self_ptr self, int64_t step) {
  auto& s = self->state;
  if (s.paused && s.stop_reason.empty() && step != s.steps) {
    s.held = [=] { continue_after(self, step); };
    s.status->set_state("paused");
    s.board->update_job([](actors::JobStatus& j) { j.state = "paused"; });
    log(self, "paused after step " + std::to_string(step));
    return;
  }
  if (!s.stop_reason.empty())
    return finish(self, runtime::exit_code::ok, "stopped by " + s.stop_reason + " after step " + std::to_string(step));
  if (step == s.steps) return finish(self, runtime::exit_code::ok, "");
  run_step(self, step + 1);
}

// The first step follows the checkpoint the stage restored (if any).
void begin(self_ptr self) {
  auto& st = self->state;
  if (st.writers.empty()) return run_step(self, 1);
  st.status->set_state("restoring");
  // Every rank restores the same step; rank 0 tells which (a rank that failed has told the supervisor).
  self->request(st.stages.front(), caf::infinite, restored_atom::value)
      .then(
          [=](int64_t step, const std::string& message) {
            auto& s = self->state;
            if (!message.empty()) log(self, message);
            if (s.checkpoint.create_seed_checkpoint)
              return save(self, 0, [=] {
                finish(self, runtime::exit_code::ok, "seed checkpoint written (checkpoint.create_seed_checkpoint)");
              });
            if (step >= s.steps)
              return finish(self, runtime::exit_code::ok,
                            "the checkpoint is at step " + std::to_string(step) + ", training.steps is " +
                                std::to_string(s.steps) + ": nothing to train");
            run_step(self, step + 1);
          },
          [=](caf::error& err) { finish(self, runtime::exit_code::failed, "restoring: " + reason(err)); });
}

void run_step(self_ptr self, int64_t step) {
  auto& st = self->state;
  // A stop that arrived while restoring, saving or validating takes effect here.
  if (!st.stop_reason.empty())
    return finish(self, runtime::exit_code::ok, "stopped by " + st.stop_reason + " before step " + std::to_string(step));
  st.running = true;
  st.step_started = clock::now();
  st.status->set_state("waiting-step");
  st.status->set_step(step);
  st.board->update_job([](actors::JobStatus& j) { j.state = "running"; });
  ask_all<train::StepStats>(
      self, [=](size_t r) { return self->request(self->state.stages[r], caf::infinite, step_atom::value, step); },
          [=](std::vector<train::StepStats> per_rank) {
            auto& s = self->state;
            s.board->steps().add_rank_steps(per_rank);
            auto stats = combine(per_rank);
            s.running = false;
            stats.wall_seconds = std::chrono::duration<double>(clock::now() - s.step_started).count();
            s.history.push_back(stats);
            self->send(s.sink, metrics_atom::value, stats);
            if (!std::isfinite(stats.loss))
              return finish(self, runtime::exit_code::diverged,
                            "loss is " + std::to_string(stats.loss) + " at step " + std::to_string(step));
            s.last_step = step;
            auto next = [=] { validate(self, step, [=] { continue_after(self, step); }); };
            if (save_due(s, step)) {
              s.checkpoint_requested = false;
              return save(self, step, next);
            }
            next();
          },
          [=](caf::error& err) {
            self->state.running = false;
            finish(self, runtime::exit_code::failed, "step " + std::to_string(step) + " failed: " + reason(err));
          });
}

caf::behavior coordinator(self_ptr self, config::JobConfig cfg, std::vector<caf::actor> stages, caf::actor sink,
                          caf::actor supervisor, std::vector<caf::actor> writers,
                          std::shared_ptr<actors::StatusBoard> board) {
  auto& st = self->state;
  st.status = board->enroll("coordinator");
  end_on_exception(self, "coordinator");
  runtime::failpoint("coordinator.start", 0);
  st.board = board;
  st.stages = std::move(stages);
  st.sink = std::move(sink);
  st.supervisor = std::move(supervisor);
  st.steps = cfg.training.steps;
  st.checkpoint = cfg.checkpoint;
  st.checkpoint_folder = checkpoint::checkpoint_folder(cfg);
  st.writers = std::move(writers);
  st.validation_freq = cfg.validation.enable ? cfg.validation.freq : 0;
  st.status->set_state("idle");
  return {
      [=](start_atom) {
        self->state.status->on_message(self);
        self->state.started = true;
        if (!self->state.finished) begin(self);
      },
      [=](stop_atom, const std::string& reason) {
        auto& s = self->state;
        s.status->on_message(self);
        if (s.stop_reason.empty()) s.stop_reason = reason;
        // Once started, the running step, save or validation finishes first and the flow stops
        // at its next turn (continue_after / run_step).
        if (!s.started) finish(self, runtime::exit_code::ok, "stopped by " + reason + " before the first step");
        if (auto next = std::move(s.held)) {  // paused: the held turn sees the stop and ends
          s.held = nullptr;
          next();
        }
      },
      [=](pause_atom) {
        auto& s = self->state;
        s.status->on_message(self);
        if (s.paused || s.finished) return;
        s.paused = true;
        log(self, "pause requested: holding after the running step");
      },
      [=](resume_atom) {
        auto& s = self->state;
        s.status->on_message(self);
        if (!s.paused) return;
        s.paused = false;
        log(self, "resumed");
        if (auto next = std::move(s.held)) {
          s.held = nullptr;
          next();
        }
      },
      [=](ckpt_now_atom) {
        auto& s = self->state;
        s.status->on_message(self);
        if (s.writers.empty()) return log(self, "checkpoint requested, but checkpoint.enable is false");
        if (s.finished) return;
        // Between steps (paused) the last finished step is saved now; otherwise the running one
        // is, once it ends.
        if (s.held && s.last_step > 0) return save(self, s.last_step, [] {});
        s.checkpoint_requested = true;
        log(self, "checkpoint requested: saving after the running step");
      },
      [=](written_atom, int64_t step, const std::string& record, const std::string& error) {
        auto& s = self->state;
        s.status->on_message(self);
        if (!s.saving || s.saving->step != step) return;  // from a save that already failed
        if (!error.empty()) return save_failed(self, step, error);
        s.saving->shard_records.push_back(record);
        commit_when_complete(self);
      },
      [=](status_atom) {
        self->state.status->on_message(self);
        return self->state.status->snapshot();
      },
  };
}

}  // namespace

caf::actor spawn_coordinator(caf::actor_system& sys, const config::JobConfig& cfg, std::vector<caf::actor> stages,
                             caf::actor sink, caf::actor supervisor, std::vector<caf::actor> writers,
                             std::shared_ptr<actors::StatusBoard> board) {
  return sys.spawn(coordinator, cfg, std::move(stages), std::move(sink), std::move(supervisor), std::move(writers),
                   std::move(board));
}

}  // namespace troupe::actors
