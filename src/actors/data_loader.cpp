#include "actors/data_loader.h"
#include "runtime/failpoint.h"
#include "actors/actor_failure.h"

#include "actors/data_loader_protocol.h"
#include "data/batch_source.h"
#include "actors/status_board.h"

namespace troupe::actors {

namespace {

struct loader_state {
  std::shared_ptr<actors::StatusEntry> status;
  std::unique_ptr<data::BatchSource> source;
  int64_t skips_published = 0;
};

// Documents skipped so far, by reason, for the inspection console (the log names each one).
void publish_skips(loader_state& s) {
  const auto k = s.source->skips();
  if (k.total() == s.skips_published) return;
  s.skips_published = k.total();
  s.status->set_detail("skipped documents: " + std::to_string(k.total()) + " (" + k.breakdown("the text field") + ")");
}

caf::behavior data_loader(caf::stateful_actor<loader_state>* self, config::JobConfig cfg, int rank,
                          data::DataShare share, caf::actor supervisor, std::shared_ptr<actors::StatusBoard> board) {
  auto& st = self->state;
  st.status = board->enroll("data_loader[" + std::to_string(rank) + "]");
  end_on_exception(self, "data_loader[" + std::to_string(rank) + "]");
  runtime::failpoint("data_loader.start", rank);
  // No batch after a failure: the source is dropped and the supervisor ends the job.
  auto fail = [=](const std::string& what) {
    auto& s = self->state;
    s.status->set_error(what);
    s.source.reset();
    self->send(supervisor, failure_atom::value, "data loader: " + what);
  };
  try {
    st.status->set_state("tokenizing");
    st.source = std::make_unique<data::BatchSource>(cfg, share);
    st.status->set_state("idle");
  } catch (const std::exception& e) {
    fail(e.what());
  }
  return {
      [=](credit_atom, int64_t n, caf::actor consumer) {
        auto& s = self->state;
        s.status->on_message(self);
        if (!s.source) return;  // failed at start; the supervisor is already told
        s.status->set_state("producing");
        try {
          for (int64_t i = 0; i < n; ++i)
            self->send(consumer, batch_atom::value, batch_handle(std::make_shared<const data::Batch>(s.source->next())));
        } catch (const std::exception& e) {  // a damaged shard, a file gone mid-run
          return fail(e.what());
        }
        s.status->set_step(s.source->produced());
        publish_skips(s);
        s.status->set_state("idle");
      },
      [=](seek_atom, const data::DataPosition& pos) {
        auto& s = self->state;
        s.status->on_message(self);
        if (!s.source) return;
        try {
          s.source->seek(pos);
        } catch (const std::exception& e) {
          fail(std::string("resuming: ") + e.what());
        }
      },
      [=](status_atom) {
        self->state.status->on_message(self);
        return self->state.status->snapshot();
      },
  };
}

}  // namespace

caf::actor spawn_data_loader(caf::actor_system& sys, const config::JobConfig& cfg, int rank, data::DataShare share,
                             caf::actor supervisor, std::shared_ptr<actors::StatusBoard> board) {
  return sys.spawn<caf::detached>(data_loader, cfg, rank, share, std::move(supervisor), std::move(board));
}

}  // namespace troupe::actors
