// Where training windows come from: a stream of windows of seq_len+1 tokens (inputs plus the
// next-token targets), packed as torchtitan packs them, with a position that can be saved
// (a plain struct of integers) and sought back to, so a resumed run continues at the exact
// next token.
#pragma once
#include <cstdint>

#include "data/data_position.h"

namespace troupe::data {

class WindowStream {
 public:
  virtual ~WindowStream() = default;
  // Writes the next window's seq_len+1 tokens to out.
  virtual void next_window(int64_t* out) = 0;
  virtual DataPosition position() const = 0;  // `produced` left 0: the batch layer owns it
  virtual void seek(const DataPosition& pos) = 0;
};

}  // namespace troupe::data
