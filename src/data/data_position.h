// Where the data loader stands in its deterministic order: enough to continue it exactly (a
// resumed run gets the very next token). Plain integers, saved in checkpoints as JSON.
#pragma once
#include <cstdint>

namespace troupe::data {

struct DataPosition {
  int64_t epoch = 0;     // passes over the dataset begun before the current one
  int64_t index = 0;     // text: ordinal in the pass of the first document not wholly consumed;
                         // token shards: the next window of this rank's share
  int64_t produced = 0;  // batches produced so far (the next batch's sequence number)
  int64_t file = 0;      // text: the file of that document (index into the sorted file list)
  int64_t offset = 0;    // text: its byte offset in that file
  int64_t token = 0;     // text: its tokens (BOS included) already consumed
  bool operator==(const DataPosition&) const = default;
};

// Which part of the data a data-parallel rank reads.
struct DataShare {
  int64_t rank = 0;    // this data-parallel rank
  int64_t degree = 1;  // data-parallel ranks in all
};

}  // namespace troupe::data
