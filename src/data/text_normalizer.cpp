#include "data/text_normalizer.h"

#include <utf8proc.h>

#include <cstdlib>
#include <memory>
#include <nlohmann/json.hpp>
#include <stdexcept>

namespace troupe::data {

namespace {

TextNormalizer::Form form_of(const std::string& type) {
  if (type == "NFC") return TextNormalizer::Form::NFC;
  if (type == "NFD") return TextNormalizer::Form::NFD;
  if (type == "NFKC") return TextNormalizer::Form::NFKC;
  if (type == "NFKD") return TextNormalizer::Form::NFKD;
  throw std::runtime_error("normalizer " + type + " is not supported (only NFC, NFD, NFKC, NFKD and Sequence)");
}

utf8proc_option_t options_of(TextNormalizer::Form form) {
  // STABLE: only normalizations that later Unicode versions keep, as the NF* definitions require.
  const int base = UTF8PROC_STABLE;
  switch (form) {
    case TextNormalizer::Form::NFC: return utf8proc_option_t(base | UTF8PROC_COMPOSE);
    case TextNormalizer::Form::NFD: return utf8proc_option_t(base | UTF8PROC_DECOMPOSE);
    case TextNormalizer::Form::NFKC: return utf8proc_option_t(base | UTF8PROC_COMPOSE | UTF8PROC_COMPAT);
    case TextNormalizer::Form::NFKD: return utf8proc_option_t(base | UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT);
  }
  return utf8proc_option_t(base);
}

bool is_ascii(std::string_view text) {
  for (char c : text)
    if (static_cast<unsigned char>(c) >= 0x80) return false;
  return true;
}

}  // namespace

TextNormalizer TextNormalizer::from_json(const nlohmann::json& normalizer) {
  TextNormalizer out;
  if (normalizer.is_null()) return out;
  const std::string type = normalizer.value("type", "");
  if (type == "Sequence") {
    for (const auto& step : normalizer.value("normalizers", nlohmann::json::array())) {
      auto inner = from_json(step);
      out.forms_.insert(out.forms_.end(), inner.forms_.begin(), inner.forms_.end());
    }
    return out;
  }
  out.forms_.push_back(form_of(type.empty() ? normalizer.dump() : type));
  return out;
}

std::string TextNormalizer::apply(std::string_view text) const {
  // ASCII is invariant under every normalization form, and most training text is mostly ASCII.
  if (forms_.empty() || is_ascii(text)) return std::string(text);
  std::string current(text);
  for (Form form : forms_) {
    utf8proc_uint8_t* result = nullptr;
    const auto n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(current.data()),
                                static_cast<utf8proc_ssize_t>(current.size()), &result, options_of(form));
    if (n < 0) throw std::invalid_argument(std::string("normalizing text: ") + utf8proc_errmsg(n));
    std::unique_ptr<utf8proc_uint8_t, decltype(&std::free)> owned(result, &std::free);
    current.assign(reinterpret_cast<const char*>(result), static_cast<size_t>(n));
  }
  return current;
}

}  // namespace troupe::data
