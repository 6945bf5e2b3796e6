// tiktoken's rank files (`tokenizer.model` of Meta's Llama 3 releases): one line per token,
// "<base64 of its bytes> <rank>", the rank being both the token id and its merge priority.
// The file holds neither the split regex nor the special tokens; Llama 3's are assumed, as in
// Meta's reference tokenizer.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace troupe::data {

// True when `text` looks like a rank file rather than JSON.
bool is_tiktoken_file(std::string_view text);

// Token bytes by rank; std::runtime_error naming the line of a malformed entry, a rank that is
// not dense from 0, or a repeated token.
std::vector<std::string> read_tiktoken_ranks(std::string_view text);

// Every (left, right) rank pair whose concatenation is a token, ordered by that token's rank:
// tiktoken merges the adjacent pair whose concatenation has the lowest rank.
std::vector<std::pair<int32_t, int32_t>> tiktoken_merges(const std::vector<std::string>& tokens);

// Llama 3's 256 special tokens, which take the ids after the ranked tokens.
std::vector<std::string> llama3_special_tokens();

}  // namespace troupe::data
