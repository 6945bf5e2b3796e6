#include "runtime/run_training.h"

#include <caf/all.hpp>

#include <chrono>
#include <future>

#include "actors/node_supervisor.h"
#include "actors/node_supervisor_protocol.h"
#include "data/tokenizer.h"
#include "runtime/status_board.h"
#include "train/trainer.h"

namespace troupe::runtime {

TrainOutcome run_training(const config::JobConfig& cfg, const RunHooks& hooks) {
  // Fail here, not inside an actor, on what can be checked up front.
  train::resolve_device(cfg.job.device);
  // The model is sized by the tokenizer, as in torchtitan.
  const auto vocab_size = data::Tokenizer::load(cfg.model.tokenizer_path).vocab_size();
  caf::actor_system_config sys_cfg;
  // Compute runs on detached threads; the event-based actors need one thread, and a sharing
  // scheduler sleeps on a condition variable where work stealing would spin on the cores that
  // the compute threads need.
  sys_cfg.set("scheduler.policy", caf::atom("sharing"));
  sys_cfg.set("scheduler.max-threads", 1);
  caf::actor_system sys{sys_cfg};
  auto board = std::make_shared<StatusBoard>();
  auto promise = std::make_shared<std::promise<TrainOutcome>>();
  auto result = promise->get_future();
  auto supervisor = actors::spawn_node_supervisor(sys, cfg, vocab_size, board, promise);
  if (hooks.on_started) hooks.on_started(sys, supervisor);
  caf::anon_send(supervisor, actors::start_atom::value);
  int stops_sent = 0;
  while (result.wait_for(std::chrono::milliseconds(20)) != std::future_status::ready) {
    if (hooks.stop_requests && hooks.stop_requests->load() > stops_sent) {
      stops_sent = hooks.stop_requests->load();
      caf::anon_send(supervisor, actors::stop_atom::value, std::string("signal"));
    }
  }
  return result.get();
  // ~actor_system waits for every actor: the supervisor has already told them all to exit.
}

}  // namespace troupe::runtime
