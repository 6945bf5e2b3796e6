// Tokenizes the documents of a DocumentReader ahead of use on worker threads, handing them
// out in reading order: the order (and so every batch) is the same for any number of workers.
#pragma once
#include <cstdint>
#include <deque>
#include <future>
#include <optional>
#include <vector>

#include "data/data_position.h"
#include "data/document_reader.h"
#include "data/tokenizer.h"

namespace troupe::data {

struct TokenizedDocument {
  std::vector<int32_t> tokens;  // BOS (if the tokenizer has one), the text, EOS (likewise)
  DocumentPlace place;
};

class TokenizeAhead {
 public:
  enum class Passes { Forever, Once };
  // `reader` must outlive this. Reads this rank's documents (ordinal mod degree == rank);
  // Forever starts a new epoch at each end of the files.
  TokenizeAhead(DocumentReader& reader, Tokenizer tokenizer, DataShare share, int workers, Passes passes = Passes::Forever);
  ~TokenizeAhead();

  // The next document; false only after the single pass of Passes::Once.
  bool next(TokenizedDocument& doc);
  // Drops what is in flight and reads on from `place` (a document of this rank's share).
  void seek(const DocumentPlace& place);

 private:
  struct Pending {
    int64_t epoch;
    std::vector<DocumentPlace> places;
    std::future<std::vector<std::optional<std::vector<int32_t>>>> tokens;  // nullopt: invalid UTF-8
  };
  void fill();
  void read_chunk(std::vector<Document>& docs);
  std::vector<std::optional<std::vector<int32_t>>> tokenize(const std::vector<Document>& docs) const;
  void drain();

  DocumentReader& reader_;
  Tokenizer tokenizer_;
  DataShare share_;
  size_t depth_;  // chunks in flight
  std::optional<int32_t> bos_, eos_;
  std::deque<Pending> pending_;
  std::deque<TokenizedDocument> ready_;
  Passes passes_;
  bool files_done_ = false;  // Passes::Once: everything is read
  int64_t epoch_ = 0;
  int64_t empty_epochs_ = 0;  // consecutive passes that gave this rank nothing
};

}  // namespace troupe::data
