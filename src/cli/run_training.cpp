#include "cli/run_training.h"

#include <caf/all.hpp>
#include <caf/io/all.hpp>

#include <chrono>
#include <cstdlib>
#include <future>
#include <optional>
#include <iostream>
#include <thread>

#include "actors/key_value_store.h"
#include "actors/node_supervisor.h"
#include "actors/node_supervisor_protocol.h"
#include "actors/metrics_sink_protocol.h"
#include "runtime/exit_codes.h"
#include "cli/inspect_server.h"
#include "actors/status_board.h"
#include "runtime/teardown_deadline.h"
#include "runtime/thread_exit.h"
#include "actors/stage_protocol.h"
#include "data/tokenizer.h"
#include "train/job_model.h"
#include "train/trainer_checkpoint.h"
#include "train/trainer.h"

namespace troupe::cli {

using actors::StatusBoard;
using actors::TrainOutcome;
using runtime::NodePlacement;
using runtime::TeardownDeadline;
namespace exit_code = runtime::exit_code;

namespace {

// Node R: node 0's supervisor, connecting until the init timeout (node 0 may start later).
caf::actor connect_to_node0(caf::actor_system& sys, const NodePlacement& place, std::chrono::seconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  std::string last_error;
  while (std::chrono::steady_clock::now() < deadline) {
    auto node0 = sys.middleman().remote_actor(place.rdzv_host, static_cast<uint16_t>(place.rdzv_port));
    if (node0) return *node0;
    last_error = sys.render(node0.error());
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  throw std::runtime_error("node " + std::to_string(place.node_rank) + ": cannot reach node 0 at " + place.rdzv_host +
                           ":" + std::to_string(place.rdzv_port) + " within comm.init_timeout_seconds (" +
                           std::to_string(timeout.count()) + " s): " + last_error);
}

// Node 0 hands out its store to a node whose job is the same as its own (train::job_fingerprint).
caf::actor ask_key_value_store(caf::actor_system& sys, const caf::actor& node0, const NodePlacement& place,
                               const config::KeyValues& fingerprint, std::chrono::seconds timeout) {
  caf::scoped_actor self{sys};
  caf::actor kv;
  std::string error, refusal;
  self->request(node0, timeout, actors::rdzv_atom::value, place.node_rank, runtime::host_name(),
                config::flatten(fingerprint))
      .receive([&](caf::actor a, std::string refused) { kv = std::move(a), refusal = std::move(refused); },
               [&](caf::error& err) { error = sys.render(err); });
  if (!refusal.empty()) throw config::ConfigError(refusal);
  if (!kv) throw std::runtime_error("node 0 did not hand out its rendezvous store: " + error);
  return kv;
}

// The job's actors, from the actor system's start to its end (~actor_system joins them).
TrainOutcome run_actors(caf::actor_system_config& sys_cfg, const config::JobConfig& cfg, const RunHooks& hooks,
                        const NodePlacement& placement, const models::ArchitecturePtr& model,
                        const std::shared_ptr<StatusBoard>& board,
                        TeardownDeadline& teardown) {
  const bool several_nodes = placement.nnodes > 1;
  caf::actor_system sys{sys_cfg};
  const auto init_timeout = std::chrono::seconds(cfg.comm.init_timeout_seconds);
  actors::NodeLinks links{placement, {}, {}};
  if (several_nodes && placement.node_rank == 0) {
    links.key_value_store = actors::spawn_key_value_store(sys);
  } else if (several_nodes) {
    links.node0 = connect_to_node0(sys, placement, init_timeout);
    links.key_value_store =
        ask_key_value_store(sys, links.node0, placement, train::job_fingerprint(cfg, *model), init_timeout);
  }
  auto promise = std::make_shared<std::promise<TrainOutcome>>();
  auto result = promise->get_future();
  auto supervisor = actors::spawn_node_supervisor(sys, cfg, model, links, board, promise);
  if (several_nodes && placement.node_rank == 0) {
    const bool loopback = placement.rdzv_host == "127.0.0.1" || placement.rdzv_host == "localhost";
    auto port = sys.middleman().publish(supervisor, static_cast<uint16_t>(placement.rdzv_port),
                                        loopback ? placement.rdzv_host.c_str() : nullptr, /*reuse=*/true);
    if (!port) {
      // The ranks already wait at the store: closing it fails their rendezvous at once.
      caf::anon_send_exit(links.key_value_store, caf::exit_reason::user_shutdown);
      caf::anon_send(supervisor, actors::failure_atom::value,
                     "node 0 cannot listen on " + placement.rdzv_host + ":" + std::to_string(placement.rdzv_port) +
                         ": " + sys.render(port.error()));
    }
  }
  // The inspection endpoint; training goes on without it if it cannot listen.
  std::unique_ptr<InspectServer> inspect;
  if (cfg.inspect.enable) {
    try {
      // Node R serves inspect.port + R, so several nodes on one host do not collide.
      auto node_cfg = cfg;
      if (node_cfg.inspect.port > 0) node_cfg.inspect.port += placement.node_rank;
      inspect = std::make_unique<InspectServer>(node_cfg, board, [supervisor](const std::string& action, int64_t value) {
        if (action == "pause") caf::anon_send(supervisor, actors::pause_atom::value);
        else if (action == "resume") caf::anon_send(supervisor, actors::resume_atom::value);
        else if (action == "checkpoint") caf::anon_send(supervisor, actors::ckpt_now_atom::value);
        else if (action == "log_freq") caf::anon_send(supervisor, actors::log_freq_atom::value, value);
      });
      std::cout << inspect->note() << std::endl;
    } catch (const std::exception& e) {
      std::cerr << "troupe: " << e.what() << "; continuing without the inspection endpoint" << std::endl;
    }
  }
  if (hooks.on_started) hooks.on_started(sys, supervisor);
  caf::anon_send(supervisor, actors::start_atom::value);
  int stops_sent = 0;
  // A stop ends the process within this bound whatever state the job is in: the running step
  // ends by then or its collectives have timed out, and a save has had a minute.
  const auto stop_bound = std::chrono::seconds(cfg.comm.train_timeout_seconds + 60);
  std::optional<std::chrono::steady_clock::time_point> stop_asked;
  while (result.wait_for(std::chrono::milliseconds(20)) != std::future_status::ready) {
    if (hooks.stop_requests && hooks.stop_requests->load() > stops_sent) {
      stops_sent = hooks.stop_requests->load();
      caf::anon_send(supervisor, actors::stop_atom::value, std::string("signal"));
      if (!stop_asked) stop_asked = std::chrono::steady_clock::now();
    }
    if (stop_asked && std::chrono::steady_clock::now() - *stop_asked > stop_bound) {
      std::cerr << "troupe: the job did not stop within comm.train_timeout_seconds + 60 s (" << stop_bound.count()
                << " s) of the signal; leaving without it" << std::endl;
      std::_Exit(exit_code::interrupted);
    }
  }
  if (links.key_value_store && placement.node_rank == 0)
    caf::anon_send_exit(links.key_value_store, caf::exit_reason::user_shutdown);
  auto outcome = result.get();
  // The job's last word comes before the teardown, which may take a while or never end.
  if (!outcome.message.empty())
    (outcome.exit_code == exit_code::ok ? std::cout : std::cerr) << "troupe: " << outcome.message << std::endl;
  if (hooks.on_outcome) hooks.on_outcome(outcome);
  if (several_nodes) {
    // A job of several nodes leaves without destroying the actor system: CAF's middleman keeps
    // the actors it handed to other nodes alive until those nodes let go, which a node that has
    // already exited never does, so ~actor_system would wait for their threads forever (seen:
    // node 1 hanging after node 0 finished). A failed job may also leave ranks inside a
    // collective whose Gloo threads wait out their own timeout. The metrics and checkpoints are
    // on disk already.
    std::cout.flush();
    std::cerr.flush();
    std::_Exit(outcome.exit_code);
  }
  // Every collective of ours gives up within the train timeout; a rank stuck past that is stuck
  // for good (seen on GPUs: a rank's communicator waiting for a peer that failed).
  // A rank found stuck (the supervisor's stall watch) will not stop at all: the others get the
  // time to write what they hold, not the communicators' timeout.
  const auto limit = std::chrono::seconds(outcome.stuck ? 30 : cfg.comm.train_timeout_seconds + 30);
  teardown.arm(limit, outcome.exit_code,
               "the job ended, but its actors did not stop within " +
                   std::string(outcome.stuck ? "30 s of finding a rank stuck" : "comm.train_timeout_seconds + 30 s") +
                   " (" + std::to_string(limit.count()) + " s); leaving without them");
  return outcome;  // ~actor_system waits for every actor: the supervisor has told them all to exit
}

}  // namespace

TrainOutcome run_training(const config::JobConfig& cfg, const RunHooks& hooks, const NodePlacement& placement) {
  // Fail here, not inside an actor, on what can be checked up front.
  train::resolve_device(cfg.job.device);
  // The model, its vocabulary sized by the tokenizer as in torchtitan.
  const auto tokenizer = data::Tokenizer::load(cfg.model.tokenizer_path);
  if (const auto note = data::unused_ids_note(tokenizer, cfg.model.tokenizer_path); !note.empty())
    std::cerr << "troupe: warning: " << note << std::endl;
  const auto model = train::job_model(cfg, tokenizer.vocab_size());
  try {
    train::check_layout(cfg, train::local_rank_count(cfg) * placement.nnodes, *model);
  } catch (const std::invalid_argument& e) {
    throw config::ConfigError(e.what());
  }
  train::check_checkpoint_model(cfg, *model);
  caf::actor_system_config sys_cfg;
  // Compute runs on detached threads; the event-based actors need one thread, and a sharing
  // scheduler sleeps on a condition variable where work stealing would spin on the cores that
  // the compute threads need.
  sys_cfg.set("scheduler.policy", caf::atom("sharing"));
  sys_cfg.set("scheduler.max-threads", 1);
  const bool several_nodes = placement.nnodes > 1;
  if (several_nodes) {
    // The control plane between nodes: CAF's network layer. Tensors never travel here.
    sys_cfg.load<caf::io::middleman>();
    sys_cfg.add_message_type<train::StepStats>("step_stats");
    sys_cfg.add_message_type<std::vector<caf::actor>>("std::vector<actor>");
    sys_cfg.add_message_type<actors::actor_status>("actor_status");
    sys_cfg.add_message_type<std::vector<actors::actor_status>>("std::vector<actor_status>");
  }
  TeardownDeadline teardown;  // armed once the job has ended; bounds what follows
  auto board = std::make_shared<StatusBoard>(placement.node_rank);
  auto outcome = run_actors(sys_cfg, cfg, hooks, placement, model, board, teardown);
  // CAF releases ~actor_system before a detached actor's thread has finished exiting (its
  // thread-local destructors run later); the next job in this process (tests, benchmarks) must
  // not start while they do.
  runtime::await_threads_gone(board->enrolled_threads(), std::chrono::seconds(10));
  return outcome;
}

}  // namespace troupe::cli
