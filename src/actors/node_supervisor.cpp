#include "actors/node_supervisor.h"

#include "actors/checkpoint_writer.h"
#include "actors/coordinator.h"
#include "actors/data_loader.h"
#include "actors/metrics_sink.h"
#include "actors/metrics_sink_protocol.h"
#include "actors/node_supervisor_protocol.h"
#include "actors/stage.h"
#include "runtime/exit_codes.h"
#include "models/llama3/model_args.h"
#include "runtime/status_board.h"
#include "comm/rendezvous.h"
#include "parallel/device_mesh.h"
#include "train/trainer.h"

#include <torch/cuda.h>

#include <sstream>

namespace troupe::actors {

namespace {

struct supervisor_state {
  std::shared_ptr<runtime::StatusEntry> status;
  std::shared_ptr<std::promise<runtime::TrainOutcome>> outcome;
  std::vector<caf::actor> children;
  caf::actor coordinator;
  bool ended = false;
};

using self_ptr = caf::stateful_actor<supervisor_state>*;

// -1: every visible GPU on CUDA, one rank on the CPU.
int local_rank_count(const config::JobConfig& cfg) {
  if (cfg.job.local_ranks > 0) return static_cast<int>(cfg.job.local_ranks);
  return train::resolve_device(cfg.job.device) == "cuda" ? static_cast<int>(torch::cuda::device_count()) : 1;
}

std::string job_banner(const config::JobConfig& cfg, int64_t vocab_size, int ranks) {
  auto args = models::llama3::flavor(cfg.model.flavor);
  args.vocab_size = vocab_size;
  const auto device = train::resolve_device(cfg.job.device);
  std::ostringstream line;
  line << "troupe: " << (cfg.job.description.empty() ? "training" : cfg.job.description) << " | " << cfg.model.name
       << ' ' << cfg.model.flavor << ", " << args.num_params() << " parameters, vocab " << vocab_size << " | device "
       << device << ", compute "
       << (device == "cuda" ? cfg.training.mixed_precision_param : std::string("float32 (CPU)")) << " | " << ranks << (ranks == 1 ? " rank" : " ranks") << " | batch " << cfg.training.local_batch_size << " x seq "
       << cfg.training.seq_len << ", " << cfg.training.steps << " steps | metrics in " << cfg.job.dump_folder;
  return line.str();
}

void end_job(self_ptr self, runtime::TrainOutcome outcome) {
  auto& st = self->state;
  if (st.ended) return;
  st.ended = true;
  st.status->set_state("done");
  for (auto& child : st.children) self->send_exit(child, caf::exit_reason::user_shutdown);
  st.outcome->set_value(std::move(outcome));
  self->quit();
}

caf::behavior node_supervisor(self_ptr self, config::JobConfig cfg, int64_t vocab_size,
                              std::shared_ptr<runtime::StatusBoard> board,
                              std::shared_ptr<std::promise<runtime::TrainOutcome>> outcome) {
  auto& st = self->state;
  st.status = board->enroll("node_supervisor");
  st.outcome = std::move(outcome);
  auto& sys = self->system();
  auto me = caf::actor_cast<caf::actor>(self);
  auto sink = spawn_metrics_sink(sys, cfg, /*rank=*/0, board);
  // One node for now: this process hosts every rank. Ranks find each other through an
  // in-process store; each stage connects its communicators while it starts.
  const int world = local_rank_count(cfg);
  const auto dims = parallel::ParallelDims::resolve(cfg.parallelism, world);
  std::shared_ptr<comm::Rendezvous> rendezvous;
  if (world > 1) {
    rendezvous = comm::Rendezvous::in_process(std::chrono::seconds(cfg.comm.init_timeout_seconds));
    rendezvous->set_operation_timeout(std::chrono::seconds(cfg.comm.train_timeout_seconds));
  }
  std::vector<caf::actor> stages, writers;
  for (int r = 0; r < world; ++r) {
    const parallel::DeviceMesh mesh(dims, r);
    const data::DataShare share{mesh.rank_in({parallel::MeshDim::dp_replicate, parallel::MeshDim::dp_shard}), dims.dp()};
    auto loader = spawn_data_loader(sys, cfg, r, share, me, board);
    stages.push_back(spawn_stage(sys, cfg, vocab_size, {r, r, world, rendezvous}, share, loader, me, board));
    st.children.push_back(loader);
    if (cfg.checkpoint.enable) writers.push_back(spawn_checkpoint_writer(sys, cfg, r, me, board));
  }
  st.coordinator = spawn_coordinator(sys, cfg, stages, sink, me, writers, board);
  st.children.push_back(st.coordinator);
  st.children.push_back(sink);
  st.children.insert(st.children.end(), stages.begin(), stages.end());
  st.children.insert(st.children.end(), writers.begin(), writers.end());
  for (auto& child : st.children) self->monitor(child);
  // A child that dies before the job has ended is a failure, whatever its reason.
  self->set_down_handler([=](caf::down_msg& msg) {
    if (!self->state.ended)
      end_job(self, {runtime::exit_code::failed, "an actor stopped unexpectedly: " + to_string(msg.reason), {}});
  });
  self->send(sink, log_atom::value, job_banner(cfg, vocab_size, world));
  st.status->set_state("running");
  return {
      [=](start_atom) {
        self->state.status->on_message(self->mailbox().size());
        self->send(self->state.coordinator, start_atom::value);
      },
      [=](stop_atom, std::string reason) {
        self->state.status->on_message(self->mailbox().size());
        self->state.status->set_state("stopping");
        self->send(self->state.coordinator, stop_atom::value, std::move(reason));
      },
      [=](done_atom, int exit_code, std::string message, std::vector<train::StepStats> steps) {
        self->state.status->on_message(self->mailbox().size());
        end_job(self, {exit_code, std::move(message), std::move(steps)});
      },
      [=](failure_atom, std::string what) {
        self->state.status->on_message(self->mailbox().size());
        end_job(self, {runtime::exit_code::failed, std::move(what), {}});
      },
      [=](children_atom) {
        self->state.status->on_message(self->mailbox().size());
        return self->state.children;
      },
      [=](status_atom) {
        self->state.status->on_message(self->mailbox().size());
        return self->state.status->snapshot();
      },
  };
}

}  // namespace

caf::actor spawn_node_supervisor(caf::actor_system& sys, const config::JobConfig& cfg, int64_t vocab_size,
                                 std::shared_ptr<runtime::StatusBoard> board,
                                 std::shared_ptr<std::promise<runtime::TrainOutcome>> outcome) {
  return sys.spawn(node_supervisor, cfg, vocab_size, std::move(board), std::move(outcome));
}

}  // namespace troupe::actors
