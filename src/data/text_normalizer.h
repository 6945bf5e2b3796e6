// The Unicode normalizers of a Hugging Face tokenizer.json ("NFC", "NFD", "NFKC", "NFKD" and a
// "Sequence" of them), applied to text before it is split into pieces. The composition data
// comes from utf8proc (Unicode 15 in Debian 12's 2.8), never from tables of our own.
#pragma once
#include <nlohmann/json_fwd.hpp>

#include <string>
#include <string_view>
#include <vector>

namespace troupe::data {

class TextNormalizer {
 public:
  enum class Form { NFC, NFD, NFKC, NFKD };

  // From tokenizer.json's "normalizer" (null: identity). std::runtime_error naming the type
  // this does not implement (Lowercase, Replace, Prepend, ...).
  static TextNormalizer from_json(const nlohmann::json& normalizer);

  bool is_identity() const { return forms_.empty(); }
  // `text` must be valid UTF-8; the result is.
  std::string apply(std::string_view text) const;

 private:
  std::vector<Form> forms_;  // applied in order
};

}  // namespace troupe::data
