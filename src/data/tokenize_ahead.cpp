#include "data/tokenize_ahead.h"

#include <stdexcept>

namespace troupe::data {

namespace {
// Big enough that a worker's thread start-up is noise, small enough to keep memory low.
constexpr size_t kChunkBytes = 1 << 20;
}  // namespace

TokenizeAhead::TokenizeAhead(DocumentReader& reader, Tokenizer tokenizer, DataShare share, int workers, Passes passes)
    : reader_(reader),
      tokenizer_(std::move(tokenizer)),
      share_(share),
      depth_(static_cast<size_t>(std::max(1, workers)) * 2),
      bos_(tokenizer_.bos_id()),
      eos_(tokenizer_.eos_id()),
      passes_(passes) {
  if (share.degree < 1 || share.rank < 0 || share.rank >= share.degree)
    throw std::invalid_argument("data share: rank " + std::to_string(share.rank) + " of " + std::to_string(share.degree));
  reader_.seek({});
}

TokenizeAhead::~TokenizeAhead() { drain(); }

void TokenizeAhead::drain() {
  for (auto& p : pending_)
    if (p.tokens.valid()) p.tokens.wait();
  pending_.clear();
  ready_.clear();
}

void TokenizeAhead::seek(const DocumentPlace& place) {
  drain();
  epoch_ = place.epoch;
  empty_epochs_ = 0;
  files_done_ = false;
  reader_.seek(place);
}

// This rank's next documents up to kChunkBytes; wraps to a new epoch at the end of the files.
void TokenizeAhead::read_chunk(std::vector<Document>& docs) {
  size_t bytes = 0;
  Document doc;
  while (bytes < kChunkBytes) {
    if (!reader_.next(doc)) {
      if (passes_ == Passes::Once) files_done_ = true;
      if (!docs.empty() || files_done_) return;  // hand out what this epoch gave before wrapping
      if (++empty_epochs_ > 1)
        throw std::runtime_error("the dataset holds no usable document for data-parallel rank " +
                                 std::to_string(share_.rank) + " of " + std::to_string(share_.degree));
      reader_.seek({++epoch_, 0, 0, 0});
      continue;
    }
    if (doc.place.ordinal % share_.degree != share_.rank) continue;
    empty_epochs_ = 0;
    doc.place.epoch = epoch_;
    bytes += doc.text.size();
    docs.push_back(std::move(doc));
  }
}

std::vector<std::optional<std::vector<int32_t>>> TokenizeAhead::tokenize(const std::vector<Document>& docs) const {
  std::vector<std::optional<std::vector<int32_t>>> out;
  out.reserve(docs.size());
  for (const auto& d : docs) {
    try {
      std::vector<int32_t> ids;
      if (bos_) ids.push_back(*bos_);
      auto body = tokenizer_.encode(d.text);
      ids.insert(ids.end(), body.begin(), body.end());
      if (eos_) ids.push_back(*eos_);
      out.emplace_back(std::move(ids));
    } catch (const std::invalid_argument&) {  // invalid UTF-8: the reader's thread logs it
      out.emplace_back(std::nullopt);
    }
  }
  return out;
}

void TokenizeAhead::fill() {
  while (pending_.size() < depth_ && !files_done_) {
    auto docs = std::make_shared<std::vector<Document>>();
    read_chunk(*docs);
    Pending p;
    p.epoch = epoch_;
    for (const auto& d : *docs) p.places.push_back(d.place);
    p.tokens = std::async(std::launch::async, [this, docs] { return tokenize(*docs); });
    pending_.push_back(std::move(p));
  }
}

bool TokenizeAhead::next(TokenizedDocument& doc) {
  int64_t first_epoch = -1;
  while (ready_.empty()) {
    fill();
    if (pending_.empty()) return false;  // Passes::Once, all handed out
    auto p = std::move(pending_.front());
    pending_.pop_front();
    // Chunks come in order: reaching a second epoch with nothing usable means a whole pass
    // was skipped (invalid UTF-8 everywhere), and waiting longer would never end.
    if (first_epoch < 0) first_epoch = p.epoch;
    if (p.epoch > first_epoch + 1)
      throw std::runtime_error("the dataset holds no usable document for data-parallel rank " +
                               std::to_string(share_.rank) + " of " + std::to_string(share_.degree));
    auto tokens = p.tokens.get();
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (!tokens[i]) {
        reader_.report_invalid_utf8(p.places[i], "invalid UTF-8");
        continue;
      }
      ready_.push_back({std::move(*tokens[i]), p.places[i]});
    }
    fill();  // keep the workers busy while the caller packs
  }
  doc = std::move(ready_.front());
  ready_.pop_front();
  return true;
}

}  // namespace troupe::data
