#include "actors/coordinator.h"

#include <chrono>
#include <cmath>

#include "actors/coordinator_protocol.h"
#include "actors/metrics_sink_protocol.h"
#include "actors/stage_protocol.h"
#include "runtime/exit_codes.h"
#include "runtime/status_board.h"

namespace troupe::actors {

namespace {

using clock = std::chrono::steady_clock;

struct coordinator_state {
  std::shared_ptr<runtime::StatusEntry> status;
  caf::actor stage, sink, supervisor;
  int64_t steps = 0;
  std::string stop_reason;  // non-empty once a stop was requested
  bool running = false, finished = false;
  clock::time_point step_started;
  std::vector<train::StepStats> history;
};

using self_ptr = caf::stateful_actor<coordinator_state>*;

// Flushes the metrics first so that nothing logged is lost when the process exits.
void finish(self_ptr self, int exit_code, std::string message) {
  auto& st = self->state;
  if (st.finished) return;
  st.finished = true;
  st.status->set_state("stopping");
  auto report = [=](bool) {
    auto& s = self->state;
    self->send(s.supervisor, done_atom::value, exit_code, message, s.history);
    s.status->set_state("done");
  };
  self->request(st.sink, caf::infinite, flush_atom::value).then(report, [=](caf::error&) { report(false); });
}

void run_step(self_ptr self, int64_t step) {
  auto& st = self->state;
  st.running = true;
  st.step_started = clock::now();
  st.status->set_state("waiting-step");
  st.status->set_step(step);
  self->request(st.stage, caf::infinite, step_atom::value, step)
      .then(
          [=](train::StepStats stats) {
            auto& s = self->state;
            s.running = false;
            stats.wall_seconds = std::chrono::duration<double>(clock::now() - s.step_started).count();
            s.history.push_back(stats);
            self->send(s.sink, metrics_atom::value, stats);
            if (!std::isfinite(stats.loss))
              return finish(self, runtime::exit_code::diverged,
                            "loss is " + std::to_string(stats.loss) + " at step " + std::to_string(step));
            if (!s.stop_reason.empty())
              return finish(self, runtime::exit_code::ok,
                            "stopped by " + s.stop_reason + " after step " + std::to_string(step));
            if (step == s.steps) return finish(self, runtime::exit_code::ok, "");
            run_step(self, step + 1);
          },
          [=](caf::error& err) {
            self->state.running = false;
            finish(self, runtime::exit_code::failed, "step " + std::to_string(step) + " failed: " + to_string(err));
          });
}

caf::behavior coordinator(self_ptr self, config::JobConfig cfg, caf::actor stage, caf::actor sink,
                          caf::actor supervisor, std::shared_ptr<runtime::StatusBoard> board) {
  auto& st = self->state;
  st.status = board->enroll("coordinator");
  st.stage = std::move(stage);
  st.sink = std::move(sink);
  st.supervisor = std::move(supervisor);
  st.steps = cfg.training.steps;
  st.status->set_state("idle");
  return {
      [=](start_atom) {
        self->state.status->on_message(self->mailbox().size());
        if (!self->state.finished) run_step(self, 1);
      },
      [=](stop_atom, const std::string& reason) {
        auto& s = self->state;
        s.status->on_message(self->mailbox().size());
        if (s.stop_reason.empty()) s.stop_reason = reason;
        if (!s.running) finish(self, runtime::exit_code::ok, "stopped by " + reason + " before the first step");
      },
      [=](status_atom) {
        self->state.status->on_message(self->mailbox().size());
        return self->state.status->snapshot();
      },
  };
}

}  // namespace

caf::actor spawn_coordinator(caf::actor_system& sys, const config::JobConfig& cfg, caf::actor stage, caf::actor sink,
                             caf::actor supervisor, std::shared_ptr<runtime::StatusBoard> board) {
  return sys.spawn(coordinator, cfg, std::move(stage), std::move(sink), std::move(supervisor), std::move(board));
}

}  // namespace troupe::actors
