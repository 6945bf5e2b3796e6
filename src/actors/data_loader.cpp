#include "actors/data_loader.h"

#include <torch/torch.h>

#include "actors/data_loader_protocol.h"
#include "data/batch.h"
#include "data/token_corpus.h"
#include "data/tokenizer.h"
#include "data/window_sampler.h"
#include "runtime/status_board.h"

namespace troupe::actors {

namespace {

struct loader_state {
  std::shared_ptr<runtime::StatusEntry> status;
  std::vector<int32_t> tokens;
  std::unique_ptr<data::WindowSampler> sampler;
  int64_t batch_size = 0, seq_len = 0, produced = 0;
};

data::Batch make_batch(loader_state& st) {
  auto window = torch::empty({st.batch_size, st.seq_len + 1}, torch::kLong);
  auto* out = window.data_ptr<int64_t>();
  for (int64_t b = 0; b < st.batch_size; ++b) {
    const int64_t offset = st.sampler->next();
    for (int64_t t = 0; t <= st.seq_len; ++t) out[b * (st.seq_len + 1) + t] = st.tokens[offset + t];
  }
  data::Batch batch;
  batch.tokens = window.narrow(1, 0, st.seq_len).contiguous();
  batch.targets = window.narrow(1, 1, st.seq_len).contiguous();
  batch.sequence = st.produced++;
  return batch;
}

caf::behavior data_loader(caf::stateful_actor<loader_state>* self, config::JobConfig cfg, caf::actor supervisor,
                          std::shared_ptr<runtime::StatusBoard> board) {
  auto& st = self->state;
  st.status = board->enroll("data_loader");
  st.batch_size = cfg.training.local_batch_size;
  st.seq_len = cfg.training.seq_len;
  try {
    st.status->set_state("tokenizing");
    auto tokenizer = data::Tokenizer::load(cfg.model.tokenizer_path);
    st.tokens = data::tokenize_corpus(data::dataset_file(cfg.training.dataset, cfg.training.dataset_path), tokenizer);
    st.sampler = std::make_unique<data::WindowSampler>(static_cast<int64_t>(st.tokens.size()), st.seq_len,
                                                       static_cast<uint64_t>(cfg.job.seed));
    st.status->set_state("idle");
  } catch (const std::exception& e) {
    st.status->set_error(e.what());
    self->send(supervisor, failure_atom::value, std::string("data loader: ") + e.what());
  }
  return {
      [=](credit_atom, int64_t n, caf::actor consumer) {
        auto& s = self->state;
        s.status->on_message(self->mailbox().size());
        if (!s.sampler) return;  // failed at start; the supervisor is already told
        s.status->set_state("producing");
        for (int64_t i = 0; i < n; ++i) {
          auto batch = std::make_shared<const data::Batch>(make_batch(s));
          self->send(consumer, batch_atom::value, batch_handle(batch));
        }
        s.status->set_step(s.produced);
        s.status->set_state("idle");
      },
      [=](status_atom) {
        self->state.status->on_message(self->mailbox().size());
        return self->state.status->snapshot();
      },
  };
}

}  // namespace

caf::actor spawn_data_loader(caf::actor_system& sys, const config::JobConfig& cfg, caf::actor supervisor,
                             std::shared_ptr<runtime::StatusBoard> board) {
  return sys.spawn<caf::detached>(data_loader, cfg, std::move(supervisor), std::move(board));
}

}  // namespace troupe::actors
