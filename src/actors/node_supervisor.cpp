#include "actors/node_supervisor.h"
#include "actors/actor_failure.h"
#include "runtime/error_text.h"
#include "runtime/failpoint.h"

#include "actors/checkpoint_writer.h"
#include "actors/coordinator.h"
#include "actors/data_loader.h"
#include "actors/metrics_sink.h"
#include "actors/metrics_sink_protocol.h"
#include "actors/node_supervisor_protocol.h"
#include "actors/stage.h"
#include "runtime/crash_report.h"
#include "runtime/exit_codes.h"
#include "actors/status_board.h"
#include "actors/caf_store.h"
#include "comm/flight_recorder.h"
#include "comm/rendezvous.h"
#include "parallel/device_mesh.h"
#include "train/job_model.h"
#include "train/trainer.h"
#include "runtime/node_placement.h"

#include <torch/cuda.h>

#include <algorithm>
#include <map>
#include <functional>
#include <iostream>
#include <set>
#include <sstream>

namespace troupe::actors {

namespace {

struct supervisor_state {
  std::shared_ptr<actors::StatusEntry> status;
  std::shared_ptr<std::promise<actors::TrainOutcome>> outcome;
  std::vector<caf::actor> children;
  caf::actor coordinator, sink;
  std::shared_ptr<actors::StatusBoard> board;
  NodeLinks links;
  // Node 0: every node's ranks, in global rank order, and the other nodes' supervisors.
  std::vector<std::vector<caf::actor>> stages_of, writers_of;
  std::vector<caf::actor> remote_supervisors;
  int joined = 1;  // nodes whose ranks are known (this one included)
  std::map<caf::node_id, std::string> node_names;  // node 0: each joined node as "node R (host H)"
  std::set<caf::node_id> gone_nodes;   // nodes whose actors went down
  std::vector<caf::actor> awaiting;    // nodes told the outcome, not yet acknowledged
  actors::TrainOutcome result;        // delivered once they have
  bool started = false, ended = false, delivered = false;
  std::function<void()> spawn_coordinator;
  actors::StallLimits stall_limits;
  std::vector<std::pair<int, std::shared_ptr<comm::FlightRecorder>>> flight_recorders;  // by local rank
  std::string traces_folder, traces_prefix;  // where a failed job writes them: prefix + rank + ".json"
  uint64_t quits_seen = runtime::quit_signals();
  config::KeyValues fingerprint;  // node 0: what every other node must match (train::job_fingerprint)
};

using self_ptr = caf::stateful_actor<supervisor_state>*;

std::string job_banner(const config::JobConfig& cfg, const models::Architecture& model, int nodes, int ranks) {
  const auto device = train::resolve_device(cfg.job.device);
  std::ostringstream line;
  line << "troupe: " << (cfg.job.description.empty() ? "training" : cfg.job.description) << " | " << model.family()
       << ' ' << (cfg.model.flavor.empty() ? std::string("(from its checkpoint)") : cfg.model.flavor)
       << (cfg.model.dimensions.empty() ? "" : " (resized)") << ", " << model.num_params() << " parameters, vocab "
       << model.vocab_size() << " | device "
       << device << ", compute "
       << (device == "cuda" ? cfg.training.mixed_precision_param : std::string("float32 (CPU)")) << " | ";
  if (nodes > 1) line << nodes << " nodes, ";
  line << ranks << (ranks == 1 ? " rank" : " ranks") << " | batch " << cfg.training.local_batch_size << " x seq "
       << cfg.training.seq_len << ", " << cfg.training.steps << " steps";
  // Activation checkpointing decides the memory a user sees; say which policy is on.
  const auto& ac = cfg.activation_checkpoint;
  if (ac.mode == "full") line << " | recompute: every block";
  if (ac.mode == "selective")
    line << " | recompute: "
         << (ac.selective_ac_option == "op" ? std::string("element-wise ops")
                                            : "1 block in " + ac.selective_ac_option);
  line << " | metrics in " << cfg.job.dump_folder;
  return line.str();
}

void deliver(self_ptr self, actors::TrainOutcome outcome);

void heard_from(self_ptr self, const caf::node_id& node) {
  auto& st = self->state;
  const auto before = st.awaiting.size();
  std::erase_if(st.awaiting, [&](const caf::actor& a) { return a.node() == node; });
  if (before > 0 && st.awaiting.empty()) deliver(self, std::move(st.result));
}

// Each local rank's collectives, where its user can compare them (false: not written).
bool write_flight_records(supervisor_state& st) {
  try {
    for (const auto& [rank, recorder] : st.flight_recorders)
      comm::write_flight_record(*recorder, rank, st.traces_prefix + std::to_string(rank) + ".json");
    return !st.flight_recorders.empty();
  } catch (const std::exception& e) {
    std::cerr << "troupe: the collectives' traces were not written: " << e.what() << '\n';
    return false;
  }
}

// A failed job leaves them; its message says where.
void write_flight_records(self_ptr self, actors::TrainOutcome& outcome) {
  auto& st = self->state;
  if (outcome.exit_code != runtime::exit_code::failed) return;
  if (write_flight_records(st) && st.links.placement.node_rank == 0)
    outcome.message += " [each rank's last collectives: " + st.traces_folder + "]";
}

void deliver(self_ptr self, actors::TrainOutcome outcome) {
  auto& st = self->state;
  if (st.delivered) return;
  st.delivered = true;
  write_flight_records(self, outcome);
  for (auto& child : st.children) self->send_exit(child, caf::exit_reason::user_shutdown);
  st.outcome->set_value(std::move(outcome));
  self->quit();
}

// Node 0 tells the other nodes how the job ended and waits (briefly) for their word that they
// heard it, so that its exit does not look to them like a lost node. A node already gone
// (its actors' down messages) is not waited for.
void end_job(self_ptr self, actors::TrainOutcome outcome) {
  auto& st = self->state;
  if (st.ended) return;
  st.ended = true;
  st.status->set_state("done");
  // A failed step names one rank's error; a peer that timed out waiting names no culprit. Where
  // every rank was (node 0 sees the other nodes' as of their last report, a second ago) does.
  if (outcome.exit_code == runtime::exit_code::failed && !outcome.stuck)
    if (const auto where = actors::stages_whereabouts(st.board->snapshot()); !where.empty())
      outcome.message += " [where the ranks were: " + where + "]";
  // Node 0 names the nodes the job waited for in vain.
  if (outcome.exit_code == runtime::exit_code::failed && st.links.placement.node_rank == 0 && st.stages_of.size() > 1) {
    std::string missing;
    for (size_t n = 1; n < st.stages_of.size(); ++n)
      if (st.stages_of[n].empty()) missing += (missing.empty() ? "" : ", ") + std::to_string(n);
    if (!missing.empty()) outcome.message += " [nodes that never joined: " + missing + "]";
  }
  st.result = std::move(outcome);
  for (auto& node : st.remote_supervisors) {
    if (st.gone_nodes.count(node.node())) continue;
    st.awaiting.push_back(node);
    self->request(node, std::chrono::seconds(5), finish_atom::value, st.result.exit_code, st.result.message)
        .then([=](bool) { heard_from(self, node.node()); }, [=](caf::error&) { heard_from(self, node.node()); });
  }
  if (st.awaiting.empty()) deliver(self, std::move(st.result));
}

// A failure on this node ends the job; on node R node 0 is told first, and ends it everywhere.
void fail(self_ptr self, std::string what, bool stuck = false) {
  auto& s = self->state;
  if (s.links.node0) self->send(s.links.node0, failure_atom::value, what);
  end_job(self, {runtime::exit_code::failed, std::move(what), {}, stuck});
}

// The communicators' timeouts bound every collective; 1.5 times those, a stage that has not
// moved is stuck where none of them reaches: a driver call, a lock, Troupe's own code.
actors::StallLimits stall_limits(const config::JobConfig& cfg) {
  using ms = std::chrono::milliseconds;
  return {ms(cfg.comm.init_timeout_seconds * 1500), ms(cfg.comm.train_timeout_seconds * 1500)};
}

void watch_for_stalls(self_ptr self) {
  auto& s = self->state;
  if (s.ended) return;
  // kill -QUIT printed the stacks; a running job's collectives go with them.
  if (const auto quits = runtime::quit_signals(); quits != s.quits_seen) {
    s.quits_seen = quits;
    if (write_flight_records(s)) std::cerr << "troupe: each rank's last collectives: " << s.traces_folder << std::endl;
  }
  if (auto stall = s.board->find_stall("stage", s.stall_limits)) {
    const auto what = "a rank is stuck where no collective's timeout reaches it (no progress within 1.5 x "
                      "comm.train_timeout_seconds, or 1.5 x comm.init_timeout_seconds in its first step; every "
                      "thread's stack is printed above): " + *stall;
    runtime::dump_thread_stacks(stall->c_str(), /*once=*/true);
    return fail(self, what, /*stuck=*/true);
  }
  const auto every = std::clamp(s.stall_limits.step / 4, std::chrono::milliseconds(100), std::chrono::milliseconds(1000));
  self->delayed_send(self, every, watch_atom::value);
}

void forward_control(self_ptr self, caf::message control) {
  auto& s = self->state;
  s.status->on_message(self);
  if (s.coordinator) self->send(s.coordinator, std::move(control));
  else if (s.links.node0) self->send(s.links.node0, std::move(control));
}

caf::behavior supervise(self_ptr self, config::JobConfig cfg, models::ArchitecturePtr model, NodeLinks links,
                        std::shared_ptr<actors::StatusBoard> board) {
  auto& st = self->state;
  runtime::failpoint("node_supervisor.start", links.placement.node_rank);
  auto& sys = self->system();
  auto me = caf::actor_cast<caf::actor>(self);
  const auto& place = links.placement;
  const bool node0 = place.node_rank == 0;
  if (node0 && place.nnodes > 1) st.fingerprint = train::job_fingerprint(cfg, *model);
  st.traces_folder = cfg.job.dump_folder + "/" + cfg.comm.save_traces_folder;
  st.traces_prefix = st.traces_folder + "/" + cfg.comm.save_traces_file_prefix;
  // Ranks are numbered node by node; each stage connects its communicators while it starts,
  // rendezvousing in this process or, across nodes, at node 0's key-value store.
  const int local = train::local_rank_count(cfg);
  const int world = local * place.nnodes;
  const auto dims = parallel::ParallelDims::resolve(cfg.parallelism, world);
  std::shared_ptr<comm::Rendezvous> rendezvous;
  const auto init_timeout = std::chrono::milliseconds(std::chrono::seconds(cfg.comm.init_timeout_seconds));
  if (place.nnodes > 1) {
    const bool loopback = place.rdzv_host == "127.0.0.1" || place.rdzv_host == "localhost";
    rendezvous = actors::make_caf_rendezvous(sys, links.key_value_store, init_timeout, loopback ? "127.0.0.1" : "");
  } else if (world > 1) {
    rendezvous = comm::Rendezvous::in_process(init_timeout);
  }
  if (rendezvous) rendezvous->set_operation_timeout(std::chrono::seconds(cfg.comm.train_timeout_seconds));
  std::vector<caf::actor> stages, writers;
  for (int l = 0; l < local; ++l) {
    const int r = place.node_rank * local + l;
    const parallel::DeviceMesh mesh(dims, r);
    const data::DataShare share{mesh.rank_in({parallel::MeshDim::dp_replicate, parallel::MeshDim::dp_shard}), dims.dp()};
    auto loader = spawn_data_loader(sys, cfg, r, share, me, board);
    parallel::RankContext rank{r, place.first_gpu + l, world, rendezvous};
    if (cfg.comm.trace_buf_size > 0 && world > 1) {
      rank.flight_recorder = std::make_shared<comm::FlightRecorder>(static_cast<size_t>(cfg.comm.trace_buf_size));
      st.flight_recorders.emplace_back(r, rank.flight_recorder);
    }
    stages.push_back(spawn_stage(sys, cfg, model, rank, share, loader, me, board));
    st.children.push_back(loader);
    if (cfg.checkpoint.enable) writers.push_back(spawn_checkpoint_writer(sys, cfg, r, me, board));
  }
  st.children.insert(st.children.end(), stages.begin(), stages.end());
  st.children.insert(st.children.end(), writers.begin(), writers.end());
  for (auto& child : st.children) self->monitor(child);
  if (node0) {
    auto sink = spawn_metrics_sink(sys, cfg, /*rank=*/0, board);
    st.sink = sink;
    st.children.push_back(sink);
    board->update_job([&](actors::JobStatus& j) {
      j.nodes = place.nnodes;
      j.ranks = world;
    });
    self->monitor(sink);
    st.stages_of.resize(place.nnodes);
    st.writers_of.resize(place.nnodes);
    st.stages_of[0] = stages;
    st.writers_of[0] = writers;
    st.spawn_coordinator = [=] {
      auto& s = self->state;
      std::vector<caf::actor> all_stages, all_writers;
      for (int n = 0; n < place.nnodes; ++n) {
        all_stages.insert(all_stages.end(), s.stages_of[n].begin(), s.stages_of[n].end());
        all_writers.insert(all_writers.end(), s.writers_of[n].begin(), s.writers_of[n].end());
      }
      s.coordinator = spawn_coordinator(self->system(), cfg, all_stages, sink, me, all_writers, board);
      s.children.push_back(s.coordinator);
      self->monitor(s.coordinator);
      if (s.started) self->send(s.coordinator, start_atom::value);
    };
    self->send(sink, log_atom::value, job_banner(cfg, *model, place.nnodes, world));
    if (place.nnodes == 1) st.spawn_coordinator();
  } else {
    self->monitor(links.node0);
    self->send(links.node0, join_atom::value, place.node_rank, runtime::host_name(), stages, writers);
    self->send(self, tick_atom::value);
  }
  // Any actor of the job that dies before the job has ended is a failure, whatever its reason:
  // a remote one means its node is gone.
  self->set_down_handler([=](caf::down_msg& msg) {
    auto& s = self->state;
    if (msg.source.node() != self->node()) s.gone_nodes.insert(msg.source.node());
    if (s.ended) return heard_from(self, msg.source.node());
    if (msg.source == s.links.node0)
      return end_job(self, {runtime::exit_code::failed,
                            "lost node 0 (" + s.links.placement.rdzv_host + ":" +
                                std::to_string(s.links.placement.rdzv_port) + "): " + to_string(msg.reason),
                            {}});
    const bool remote = msg.source.node() != self->node();
    const auto named = s.node_names.find(msg.source.node());
    const std::string which = named == s.node_names.end() ? std::string() : "lost " + named->second + ": ";
    end_job(self, {runtime::exit_code::failed,
                   which + (remote ? "a rank on another node is gone (its node stopped or the network failed): "
                                   : "an actor stopped unexpectedly: ") +
                       failure_text(msg.reason),
                   {}});
  });
  st.status->set_state(node0 && place.nnodes > 1 ? "waiting-nodes" : "running");
  st.stall_limits = stall_limits(cfg);
  self->send(self, watch_atom::value);
  return {
      [=](start_atom) {
        auto& s = self->state;
        s.status->on_message(self);
        s.started = true;
        if (s.coordinator) self->send(s.coordinator, start_atom::value);
      },
      [=](stop_atom, std::string reason) {
        auto& s = self->state;
        s.status->on_message(self);
        s.status->set_state("stopping");
        // The step clock is node 0's: a stop on another node is passed there.
        if (s.coordinator) self->send(s.coordinator, stop_atom::value, std::move(reason));
        else if (s.links.node0) self->send(s.links.node0, stop_atom::value, std::move(reason));
        else end_job(self, {runtime::exit_code::ok, "stopped by " + reason + " before every node joined", {}});
      },
      [=](rdzv_atom, int node, std::string host, std::vector<std::string> fingerprint) {
        auto& s = self->state;
        s.status->on_message(self);
        const auto differ = config::disagreement(s.fingerprint, "node 0", config::unflatten(fingerprint),
                                                 "node " + std::to_string(node) + " (host " + host + ")");
        std::string refusal;
        if (!differ.empty() && !s.ended) {
          refusal = "the nodes were started with different configs: " + differ;
          // Node 0's process ends with the job: the refusal goes out first.
          self->delayed_send(self, std::chrono::milliseconds(500), refuse_atom::value, refusal);
        }
        return std::make_tuple(s.links.key_value_store, refusal);
      },
      [=](refuse_atom, std::string why) {
        self->state.status->on_message(self);
        end_job(self, {runtime::exit_code::bad_config, std::move(why), {}});
      },
      // Controls from the inspection endpoint: node 0 applies them, other nodes pass them on.
      [=](pause_atom) { forward_control(self, caf::make_message(pause_atom::value)); },
      [=](resume_atom) { forward_control(self, caf::make_message(resume_atom::value)); },
      [=](ckpt_now_atom) { forward_control(self, caf::make_message(ckpt_now_atom::value)); },
      [=](log_freq_atom, int64_t n) {
        auto& s = self->state;
        if (s.sink) self->send(s.sink, log_freq_atom::value, n);
        else if (s.links.node0) self->send(s.links.node0, log_freq_atom::value, n);
      },
      [=](tick_atom) {
        auto& s = self->state;
        if (s.ended || !s.links.node0) return;
        self->send(s.links.node0, board_atom::value, static_cast<int64_t>(s.links.placement.node_rank),
                   s.board->local_snapshot());
        self->delayed_send(self, std::chrono::seconds(1), tick_atom::value);
      },
      [=](board_atom, int64_t node, std::vector<actor_status> actors) {
        self->state.board->set_remote(node, std::move(actors));
      },
      [=](join_atom, int node, std::string host, std::vector<caf::actor> node_stages,
          std::vector<caf::actor> node_writers) {
        auto& s = self->state;
        s.status->on_message(self);
        if (node < 1 || node >= static_cast<int>(s.stages_of.size()) || !s.stages_of[node].empty()) {
          if (!s.ended)
            end_job(self, {runtime::exit_code::failed,
                           "node " + std::to_string(node) + " joined twice or is outside the job's " +
                               std::to_string(s.stages_of.size()) + " nodes",
                           {}});
          return;
        }
        auto sender = caf::actor_cast<caf::actor>(self->current_sender());
        s.node_names[sender.node()] = "node " + std::to_string(node) + " (host " + host + ")";
        s.remote_supervisors.push_back(sender);
        self->monitor(sender);
        for (auto& a : node_stages) self->monitor(a);
        for (auto& a : node_writers) self->monitor(a);
        s.stages_of[node] = std::move(node_stages);
        s.writers_of[node] = std::move(node_writers);
        if (++s.joined == static_cast<int>(s.stages_of.size())) {
          s.status->set_state("running");
          s.spawn_coordinator();
        }
      },
      [=](finish_atom, int exit_code, std::string message) {
        auto& s = self->state;
        s.status->on_message(self);
        if (!s.ended) {
          s.ended = true;
          s.status->set_state("done");
          deliver(self, {exit_code, std::move(message), {}});
        }
        return true;
      },
      [=](done_atom, int exit_code, std::string message, std::vector<train::StepStats> steps) {
        self->state.status->on_message(self);
        end_job(self, {exit_code, std::move(message), std::move(steps)});
      },
      [=](failure_atom, std::string what) {
        self->state.status->on_message(self);
        fail(self, std::move(what));
      },
      [=](watch_atom) { watch_for_stalls(self); },
      [=](children_atom) {
        self->state.status->on_message(self);
        return self->state.children;
      },
      [=](status_atom) {
        self->state.status->on_message(self);
        return self->state.status->snapshot();
      },
  };
}

}  // namespace

// The supervisor delivers the job's outcome, so nothing that goes wrong in it may leave the
// outcome undelivered: a failure while it starts the job, or in any of its handlers, ends the
// job with that error.
caf::behavior node_supervisor(self_ptr self, config::JobConfig cfg, models::ArchitecturePtr model, NodeLinks links,
                              std::shared_ptr<actors::StatusBoard> board,
                              std::shared_ptr<std::promise<actors::TrainOutcome>> outcome) {
  auto& st = self->state;
  st.status = board->enroll("node_supervisor");
  st.board = board;
  st.outcome = std::move(outcome);
  st.links = links;
  self->set_exception_handler([self](caf::scheduled_actor*, std::exception_ptr& thrown) -> caf::error {
    std::string what = "an exception that is not a std::exception";
    try {
      std::rethrow_exception(thrown);
    } catch (const std::exception& e) {
      what = runtime::error_text(e);
    } catch (...) {
    }
    if (!self->state.delivered) deliver(self, {runtime::exit_code::failed, "node supervisor: " + what, {}});
    return caf::make_error(caf::sec::runtime_error, "node supervisor: " + what);
  });
  try {
    return supervise(self, std::move(cfg), std::move(model), std::move(links), std::move(board));
  } catch (const std::exception& e) {
    deliver(self, {runtime::exit_code::failed, "node supervisor: " + runtime::error_text(e), {}});
    return {};
  }
}

caf::actor spawn_node_supervisor(caf::actor_system& sys, const config::JobConfig& cfg, models::ArchitecturePtr model,
                                 NodeLinks links, std::shared_ptr<actors::StatusBoard> board,
                                 std::shared_ptr<std::promise<actors::TrainOutcome>> outcome) {
  return sys.spawn(node_supervisor, cfg, std::move(model), std::move(links), std::move(board), std::move(outcome));
}

}  // namespace troupe::actors
