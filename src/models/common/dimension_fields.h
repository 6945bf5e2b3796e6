// A family's dimensions as a table of named fields, so that overriding them from a config,
// listing them in a checkpoint and comparing two models are one loop, not one per key.
#pragma once
#include <charconv>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <variant>
#include <vector>

#include "models/architecture.h"

namespace troupe::models {

template <class Args>
struct DimensionField {
  const char* name;
  std::variant<int64_t Args::*, double Args::*, bool Args::*> member;
};

inline std::string dimension_text(int64_t v) { return std::to_string(v); }
inline std::string dimension_text(bool v) { return v ? "true" : "false"; }
inline std::string dimension_text(double v) {
  char buf[32];
  return std::string(buf, std::to_chars(buf, buf + sizeof buf, v).ptr);  // shortest exact
}

template <class Args>
Dimensions dimensions_of(const Args& a, const std::vector<DimensionField<Args>>& fields) {
  Dimensions out;
  for (const auto& f : fields)
    std::visit([&](auto member) { out.emplace_back(f.name, dimension_text(a.*member)); }, f.member);
  return out;
}

// Sets each overridden field from its text; a key the family does not have, or a value of the
// wrong type, throws std::invalid_argument naming "model.<key>".
template <class Args>
void apply_dimensions(Args& a, const std::vector<DimensionField<Args>>& fields, const Dimensions& overrides,
                      const std::string& family) {
  for (const auto& [key, text] : overrides) {
    const DimensionField<Args>* field = nullptr;
    for (const auto& f : fields)
      if (key == f.name) field = &f;
    if (!field) {
      std::string known;
      for (const auto& f : fields) known += (known.empty() ? "" : ", ") + std::string(f.name);
      throw std::invalid_argument("model." + key + ": not a dimension of " + family + " (its keys: " + known + ")");
    }
    const auto bad = [&, key = key, text = text](const char* noun) {
      return std::invalid_argument("model." + key + " must be " + noun + ", got '" + text + "'");
    };
    std::visit(
        [&](auto member) {
          using T = std::remove_reference_t<decltype(a.*member)>;
          if constexpr (std::is_same_v<T, bool>) {
            if (text != "true" && text != "false") throw bad("true or false");
            a.*member = text == "true";
          } else {
            T v{};
            const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
            if (ec != std::errc() || end != text.data() + text.size())
              throw bad(std::is_same_v<T, double> ? "a number" : "an integer");
            a.*member = v;
          }
        },
        field->member);
  }
}

}  // namespace troupe::models
