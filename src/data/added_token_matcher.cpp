#include "data/added_token_matcher.h"

#include <algorithm>

namespace troupe::data {

namespace {
template <class Edges>
auto find_edge(Edges& edges, unsigned char byte) {
  auto it = std::lower_bound(edges.begin(), edges.end(), byte, [](const auto& e, unsigned char b) { return e.first < b; });
  return it != edges.end() && it->first == byte ? it : edges.end();
}
}  // namespace

void AddedTokenMatcher::add(const std::string& content, int32_t id) {
  if (content.empty()) return;
  first_byte_[static_cast<unsigned char>(content[0])] = true;
  int32_t node = 0;
  for (unsigned char byte : content) {
    auto& edges = nodes_[node].edges;
    auto it = find_edge(edges, byte);
    if (it == edges.end()) {
      const auto child = static_cast<int32_t>(nodes_.size());
      auto pos = std::lower_bound(edges.begin(), edges.end(), byte, [](const auto& e, unsigned char b) { return e.first < b; });
      edges.insert(pos, {byte, child});
      nodes_.emplace_back();  // invalidates `edges`; not used after this
      node = child;
    } else {
      node = it->second;
    }
  }
  nodes_[node].token = id;  // a later duplicate content wins, as in HF's added vocabulary
}

AddedTokenMatcher::Match AddedTokenMatcher::longest_match_at(std::string_view text, size_t pos) const {
  Match best{0, -1};
  if (!first_byte_[static_cast<unsigned char>(text[pos])]) return best;
  int32_t node = 0;
  for (size_t i = pos; i < text.size(); ++i) {
    const auto& edges = nodes_[node].edges;
    auto it = find_edge(edges, static_cast<unsigned char>(text[i]));
    if (it == edges.end()) break;
    node = it->second;
    if (nodes_[node].token >= 0) best = {i + 1 - pos, nodes_[node].token};
  }
  return best;
}

}  // namespace troupe::data
