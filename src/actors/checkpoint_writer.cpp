#include "actors/checkpoint_writer.h"
#include "actors/actor_failure.h"

#include <chrono>
#include <cstdio>
#include <filesystem>

#include "actors/checkpoint_writer_protocol.h"
#include "actors/data_loader_protocol.h"
#include "checkpoint/checkpoint_folder.h"
#include "checkpoint/host_snapshot.h"
#include "checkpoint/shard_file.h"
#include "runtime/failpoint.h"
#include "runtime/error_text.h"
#include "runtime/remove_tree.h"
#include "actors/status_board.h"

namespace troupe::actors {

namespace {

struct writer_state {
  std::shared_ptr<actors::StatusEntry> status;
  std::string folder;
  int rank = 0;
  int64_t keep_latest_k = 0;
};

using self_ptr = caf::stateful_actor<writer_state>*;

// A failed write leaves nothing that could be mistaken for a checkpoint.
void discard(const std::string& tmp_dir) {
  try {
    runtime::remove_tree(tmp_dir);
  } catch (const std::exception&) {
    // Left for remove_uncommitted at the next start; resume never reads it.
  }
}

std::string write_shard_record(const checkpoint::HostSnapshot& snap) {
  std::filesystem::create_directories(snap.tmp_dir);
  return checkpoint::to_json_text(checkpoint::write_shard(snap, snap.tmp_dir));
}

std::string commit(self_ptr self, int64_t step, const std::string& tmp_dir, const std::vector<std::string>& records) {
  std::vector<checkpoint::CheckpointMetadata> per_rank;
  for (size_t i = 0; i < records.size(); ++i)
    per_rank.push_back(checkpoint::from_json_text(records[i], "shard record " + std::to_string(i)));
  const auto meta = checkpoint::merge_ranks(std::move(per_rank));
  const auto dir = checkpoint::commit_step(self->state.folder, tmp_dir, meta);
  uint64_t bytes = 0;
  for (const auto& r : meta.ranks) bytes += r.bytes;
  char size[32];
  std::snprintf(size, sizeof size, "%.1f MB", static_cast<double>(bytes) / 1e6);
  std::string summary = dir + " (" + size + (meta.model_only ? ", model only" : "") + ")";
  const auto pruned = checkpoint::prune_committed(self->state.folder, self->state.keep_latest_k);
  for (size_t i = 0; i < pruned.size(); ++i)
    summary += (i == 0 ? "; removed " : ", ") + checkpoint::step_dir_name(pruned[i]);
  return summary;
}

caf::behavior checkpoint_writer(self_ptr self, config::JobConfig cfg, int rank, caf::actor supervisor,
                                std::shared_ptr<actors::StatusBoard> board) {
  auto& st = self->state;
  st.status = board->enroll("checkpoint_writer[" + std::to_string(rank) + "]");
  end_on_exception(self, "checkpoint_writer[" + std::to_string(rank) + "]");
  runtime::failpoint("checkpoint_writer.start", rank);
  st.folder = checkpoint::checkpoint_folder(cfg);
  st.rank = rank;
  st.keep_latest_k = cfg.checkpoint.keep_latest_k;
  try {
    std::filesystem::create_directories(st.folder);
    if (rank == 0) checkpoint::remove_uncommitted(st.folder);
    st.status->set_state("idle");
  } catch (const std::exception& e) {
    const auto text = runtime::error_text(e);
    st.status->set_error(text);
    self->send(supervisor, failure_atom::value, "checkpoint writer: " + text);
  }
  return {
      [=](write_atom, snapshot_handle snap, caf::actor coordinator) {
        auto& s = self->state;
        s.status->on_message(self);
        s.status->set_state("writing");
        uint64_t held = 0;
        for (const auto& t : snap->tensors) held += t.host.nbytes();
        s.status->set_bytes_in_flight(held);
        const int64_t step = snap->meta.step;
        const auto tmp_dir = snap->tmp_dir;
        s.status->set_step(step);
        std::string record, error;
        try {
          record = write_shard_record(*snap);
        } catch (const std::exception& e) {
          error = runtime::error_text(e);
          s.status->set_error(error);
          discard(tmp_dir);
        }
        snap.reset();  // the host buffers may be reused once this message is gone
        s.status->set_bytes_in_flight(0);
        s.status->set_state("idle");
        self->send(coordinator, written_atom::value, step, std::move(record), std::move(error));
      },
      [=](commit_atom, int64_t step, const std::string& tmp_dir,
          const std::vector<std::string>& records) -> caf::result<std::string> {
        auto& s = self->state;
        s.status->on_message(self);
        s.status->set_state("committing");
        try {
          auto summary = commit(self, step, tmp_dir, records);
          s.status->set_state("idle");
          return summary;
        } catch (const std::exception& e) {
          const auto text = runtime::error_text(e);
          s.status->set_error(text);
          discard(tmp_dir);
          return caf::make_error(caf::sec::runtime_error, text);
        }
      },
      [=](status_atom) {
        self->state.status->on_message(self);
        return self->state.status->snapshot();
      },
  };
}

}  // namespace

caf::actor spawn_checkpoint_writer(caf::actor_system& sys, const config::JobConfig& cfg, int rank,
                                   caf::actor supervisor, std::shared_ptr<actors::StatusBoard> board) {
  return sys.spawn<caf::detached>(checkpoint_writer, cfg, rank, std::move(supervisor), std::move(board));
}

}  // namespace troupe::actors
