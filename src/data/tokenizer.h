// Byte-level BPE tokenizer that reads and writes Hugging Face `tokenizer.json` files (Llama 3,
// Qwen3 and DeepSeek V3 layouts: optional NF* normalizer, a sequence of regex Splits + ByteLevel
// pre-tokenizer, BPE model, ByteLevel decoder, added tokens), reads tiktoken rank files, and
// trains such tokenizers. Encoding matches Hugging Face `tokenizers`
// `encode(text, add_special_tokens=False)` except on characters assigned after Unicode 14
// (PCRE2 10.42's tables; HF's Oniguruma knows Unicode 16).
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace troupe::data {

class Tokenizer {
 public:
  // Reads an HF tokenizer.json; std::runtime_error naming the file and the problem when the
  // file is unreadable, malformed, or uses a feature this tokenizer does not implement.
  static Tokenizer load(const std::string& path);

  // Adds no special tokens; added-token text inside `text` ("<|eot_id|>") becomes that token,
  // as in HF. Requires valid UTF-8 (std::invalid_argument naming the byte offset otherwise).
  std::vector<int32_t> encode(std::string_view text) const;
  // As encode, but added-token text is plain text (tiktoken's encode_ordinary).
  std::vector<int32_t> encode_ordinary(std::string_view text) const;
  // Concatenated bytes of the tokens (std::out_of_range naming a bad id). A slice of a
  // sequence can end inside a multi-byte character, so the result is not always valid UTF-8.
  std::string decode(const std::vector<int32_t>& ids) const;

  int64_t vocab_size() const;  // max id + 1, added/special tokens included
  // Ids below vocab_size() that name no token, as [first, last] ranges: each is still a row of
  // the model's embedding and output.
  std::vector<std::pair<int64_t, int64_t>> unused_ids() const;
  // Begin/end of text as the family spells them (Llama 3 <|begin_of_text|>, DeepSeek
  // <｜begin▁of▁sentence｜>, Qwen <|endoftext|> as EOS and no BOS); nullopt when absent.
  std::optional<int32_t> bos_id() const;
  std::optional<int32_t> eos_id() const;
  // Looks up a token as tokenizer.json spells it (byte-level form, e.g. "Ġthe") or an added token.
  std::optional<int32_t> token_id(std::string_view token) const;

  void save(const std::string& path) const;

  struct Impl;

 private:
  explicit Tokenizer(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
  friend Tokenizer make_tokenizer(std::shared_ptr<const Impl> impl);
  std::shared_ptr<const Impl> impl_;  // immutable once built, so copies share it
};

// Empty when the ids are contiguous; else one line naming the tokenizer's size, how many ids are
// unused and the first of their ranges.
std::string unused_ids_note(const Tokenizer& tokenizer, const std::string& path);

struct BpeTrainOptions {
  int vocab_size = 2048;  // byte tokens + merges + special tokens
  std::vector<std::string> special_tokens{"<|begin_of_text|>", "<|end_of_text|>"};
};

// Trains on the files' text split by the Llama 3 pre-tokenizer regex. Deterministic: the
// same files and options give the same tokenizer, byte for byte once saved.
Tokenizer train_bpe(const std::vector<std::string>& files, const BpeTrainOptions& options);

}  // namespace troupe::data
