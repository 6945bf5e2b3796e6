#include "data/tiktoken_file.h"

#include <algorithm>
#include <array>
#include <charconv>
#include <stdexcept>
#include <unordered_map>

namespace troupe::data {

namespace {

std::array<int8_t, 256> base64_values() {
  std::array<int8_t, 256> v;
  v.fill(-1);
  const std::string_view alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  for (size_t i = 0; i < alphabet.size(); ++i) v[static_cast<unsigned char>(alphabet[i])] = static_cast<int8_t>(i);
  return v;
}

bool decode_base64(std::string_view in, std::string& out) {
  static const auto values = base64_values();
  out.clear();
  while (!in.empty() && in.back() == '=') in.remove_suffix(1);
  uint32_t acc = 0;
  int bits = 0;
  for (char c : in) {
    const int v = values[static_cast<unsigned char>(c)];
    if (v < 0) return false;
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>((acc >> bits) & 0xFF);
    }
  }
  return !out.empty();
}

}  // namespace

bool is_tiktoken_file(std::string_view text) {
  const size_t start = text.find_first_not_of(" \t\r\n");
  return start != std::string_view::npos && text[start] != '{';
}

std::vector<std::string> read_tiktoken_ranks(std::string_view text) {
  std::vector<std::string> tokens;
  std::unordered_map<std::string, int64_t> seen;
  size_t line_no = 0;
  std::string bytes;
  while (!text.empty()) {
    const size_t end = text.find('\n');
    std::string_view line = text.substr(0, end);
    text.remove_prefix(end == std::string_view::npos ? text.size() : end + 1);
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty()) continue;
    const auto where = "rank file line " + std::to_string(line_no);
    const size_t space = line.find(' ');
    int64_t rank = -1;
    const auto rank_text = space == std::string_view::npos ? std::string_view() : line.substr(space + 1);
    auto [ptr, ec] = std::from_chars(rank_text.data(), rank_text.data() + rank_text.size(), rank);
    if (space == std::string_view::npos || ec != std::errc() || ptr != rank_text.data() + rank_text.size() ||
        !decode_base64(line.substr(0, space), bytes))
      throw std::runtime_error(where + ": expected \"<base64 token> <rank>\"");
    if (rank != static_cast<int64_t>(tokens.size()))
      throw std::runtime_error(where + ": rank " + std::to_string(rank) + " where " + std::to_string(tokens.size()) +
                               " was expected (ranks must count up from 0)");
    if (!seen.emplace(bytes, rank).second) throw std::runtime_error(where + ": the token repeats an earlier one");
    tokens.push_back(bytes);
  }
  if (tokens.empty()) throw std::runtime_error("rank file holds no tokens");
  return tokens;
}

std::vector<std::pair<int32_t, int32_t>> tiktoken_merges(const std::vector<std::string>& tokens) {
  std::unordered_map<std::string_view, int32_t> rank_of;
  for (size_t r = 0; r < tokens.size(); ++r) rank_of.emplace(tokens[r], static_cast<int32_t>(r));
  std::vector<std::pair<int32_t, int32_t>> merges;
  for (const auto& token : tokens) {
    const std::string_view t(token);
    for (size_t cut = 1; cut < t.size(); ++cut) {
      auto left = rank_of.find(t.substr(0, cut)), right = rank_of.find(t.substr(cut));
      if (left != rank_of.end() && right != rank_of.end()) merges.emplace_back(left->second, right->second);
    }
  }
  return merges;  // tokens are visited in rank order, so merges are ordered by their result
}

std::vector<std::string> llama3_special_tokens() {
  std::vector<std::string> out{"<|begin_of_text|>", "<|end_of_text|>",   "<|reserved_special_token_0|>",
                               "<|reserved_special_token_1|>", "<|reserved_special_token_2|>",
                               "<|reserved_special_token_3|>", "<|start_header_id|>", "<|end_header_id|>",
                               "<|reserved_special_token_4|>", "<|eot_id|>"};
  for (int i = 5; i < 256 - 5; ++i) out.push_back("<|reserved_special_token_" + std::to_string(i) + "|>");
  return out;
}

}  // namespace troupe::data
