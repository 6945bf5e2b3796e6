#include "data/packed_text_windows.h"

#include <algorithm>
#include <stdexcept>

namespace troupe::data {

PackedTextWindows::PackedTextWindows(std::unique_ptr<DocumentReader> reader, Tokenizer tokenizer, DataShare share,
                                     int64_t seq_len, int workers)
    : reader_(std::move(reader)), ahead_(*reader_, std::move(tokenizer), share, workers), window_(seq_len + 1) {
  docs_.push_back(next_document());
}

TokenizedDocument PackedTextWindows::next_document() {
  TokenizedDocument doc;
  ahead_.next(doc);  // never false: the text repeats forever
  return doc;
}

void PackedTextWindows::next_window(int64_t* out) {
  int64_t filled = 0;
  while (filled < window_) {
    auto& front = docs_.front();
    const auto size = static_cast<int64_t>(front.tokens.size());
    const int64_t take = std::min(window_ - filled, size - front_used_);
    std::copy_n(front.tokens.begin() + front_used_, take, out + filled);
    filled += take;
    front_used_ += take;
    if (front_used_ == size) {
      docs_.pop_front();
      front_used_ = 0;
      if (docs_.empty()) docs_.push_back(next_document());
    }
  }
}

DataPosition PackedTextWindows::position() const {
  const auto& p = docs_.front().place;
  return {.epoch = p.epoch, .index = p.ordinal, .produced = 0, .file = p.file, .offset = p.offset, .token = front_used_};
}

void PackedTextWindows::seek(const DataPosition& pos) {
  ahead_.seek({pos.epoch, pos.file, pos.offset, pos.index});
  docs_.clear();
  docs_.push_back(next_document());
  const auto& p = docs_.front().place;
  if (p.epoch != pos.epoch || p.file != pos.file || p.offset != pos.offset || p.ordinal != pos.index ||
      pos.token < 0 || pos.token >= static_cast<int64_t>(docs_.front().tokens.size()))
    throw std::runtime_error("data position (epoch " + std::to_string(pos.epoch) + ", file " + std::to_string(pos.file) +
                             ", byte " + std::to_string(pos.offset) + ", token " + std::to_string(pos.token) +
                             ") does not name a document of this dataset: did the files change?");
  front_used_ = pos.token;
}

}  // namespace troupe::data
