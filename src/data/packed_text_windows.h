// Windows over text/JSON Lines documents, packed as torchtitan does: each document's tokens
// wrapped in BOS/EOS, concatenated, and cut into consecutive windows of seq_len+1 tokens.
#pragma once
#include <deque>
#include <memory>

#include "data/document_reader.h"
#include "data/tokenize_ahead.h"
#include "data/window_stream.h"

namespace troupe::data {

class PackedTextWindows : public WindowStream {
 public:
  PackedTextWindows(std::unique_ptr<DocumentReader> reader, Tokenizer tokenizer, DataShare share, int64_t seq_len,
                    int workers);
  void next_window(int64_t* out) override;
  DataPosition position() const override;
  void seek(const DataPosition& pos) override;
  const SkipCounts& skips() const { return reader_->skips(); }

 private:
  TokenizedDocument next_document();

  std::unique_ptr<DocumentReader> reader_;
  TokenizeAhead ahead_;
  int64_t window_;
  // Documents not wholly consumed yet; never empty, so the position always names one.
  std::deque<TokenizedDocument> docs_;
  int64_t front_used_ = 0;
};

}  // namespace troupe::data
