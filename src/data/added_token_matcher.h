// Finds a tokenizer's added tokens (such as "<|begin_of_text|>") in text as Hugging Face
// `tokenizers` does before it splits the rest: leftmost match first, the longest one where
// several start at the same byte.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace troupe::data {

class AddedTokenMatcher {
 public:
  void add(const std::string& content, int32_t id);
  bool empty() const { return nodes_.size() == 1; }

  // Calls gap(text) for each stretch between matches (never empty) and token(id) for each
  // match, in text order.
  template <class Gap, class Token>
  void split(std::string_view text, Gap&& gap, Token&& token) const {
    size_t last = 0;
    for (size_t i = 0; i < text.size();) {
      const auto [length, id] = longest_match_at(text, i);
      if (length == 0) {
        ++i;
        continue;
      }
      if (i > last) gap(text.substr(last, i - last));
      token(id);
      i += length;
      last = i;
    }
    if (last < text.size()) gap(text.substr(last));
  }

 private:
  struct Match {
    size_t length;
    int32_t id;
  };
  Match longest_match_at(std::string_view text, size_t pos) const;

  // A byte trie: few added tokens (hundreds), so a sorted edge list per node is small.
  struct Node {
    std::vector<std::pair<unsigned char, int32_t>> edges;  // byte -> child node
    int32_t token = -1;                                   // id of the token ending here
  };
  std::vector<Node> nodes_{Node{}};
  bool first_byte_[256] = {};  // quick rejection: most bytes start no added token
};

}  // namespace troupe::data
