#include "train/float8_converter.h"

#include <algorithm>
#include <map>
#include <regex>

#include "models/common/layers.h"
#include "models/model.h"

namespace troupe::train {

namespace {

constexpr const char* kAutoFilter = "auto_filter_small_kn";

// "layers.12.attention.wq" -> "layers.*.attention.wq": the log lists each kind once.
std::string folded(const std::string& name) { return std::regex_replace(name, std::regex("\\.\\d+\\."), ".*."); }

std::string fold_list(const std::vector<std::string>& names) {
  std::map<std::string, int> counts;
  std::vector<std::string> order;
  for (const auto& n : names)
    if (counts[folded(n)]++ == 0) order.push_back(folded(n));
  std::string out;
  for (const auto& n : order) out += (out.empty() ? "" : ", ") + n + " (" + std::to_string(counts[n]) + ")";
  return out.empty() ? "none" : out;
}

}  // namespace

Float8Conversion convert_to_float8(models::Model& model, const config::Float8Section& cfg,
                                   kernels::Float8Linears& linears) {
  const bool auto_filter = std::ranges::find(cfg.filter_fqns, kAutoFilter) != cfg.filter_fqns.end();
  Float8Conversion out;
  for (const auto& item : model.named_modules()) {
    const auto* projection = dynamic_cast<const models::Projection*>(item.value().get());
    if (!projection) continue;
    const auto& name = item.key();
    const auto& w = projection->weight;
    std::string why;
    const auto last = name.substr(name.rfind('.') + 1);
    if (last == "output") why = "the head's output projection computes inside the fused loss kernel";
    for (const auto& f : cfg.filter_fqns)
      if (why.empty() && f != kAutoFilter && name.find(f) != std::string::npos) why = "filter_fqns has '" + f + "'";
    const auto dims = " (" + std::to_string(w.size(0)) + " x " + std::to_string(w.size(1)) + ")";
    if (why.empty() && (w.size(0) % 16 || w.size(1) % 16)) why = "FP8 GEMMs need multiples of 16" + dims;
    if (why.empty() && auto_filter)
      if (const auto small = kernels::float8_small_kn_reason(w.size(0), w.size(1)); !small.empty())
        why = std::string(kAutoFilter) + ": " + small + dims;
    if (!why.empty()) {
      out.kept.emplace_back(name, why);
      continue;
    }
    linears.add(w);
    out.converted.push_back(name);
  }
  model.weight_services().float8 = &linears;
  return out;
}

std::string Float8Conversion::describe(kernels::Float8Recipe recipe) const {
  std::string text = std::string("FP8 (") + kernels::float8_recipe_name(recipe) + "): " +
                     std::to_string(converted.size()) + " projections compute in FP8: " + fold_list(converted);
  // Kept ones by folded name, each with the reason of its first.
  std::map<std::string, std::pair<int, std::string>> kept_kinds;
  std::vector<std::string> order;
  for (const auto& [n, why] : kept) {
    auto& k = kept_kinds[folded(n)];
    if (k.first++ == 0) order.push_back(folded(n)), k.second = why;
  }
  for (const auto& n : order)
    text += (n == order.front() ? "; kept in bf16: " : ", ") + n + " (" + std::to_string(kept_kinds[n].first) +
            "): " + kept_kinds[n].second;
  text += ". auto_filter_small_kn keeps a projection in bf16 when a dimension is below 1024 or not a multiple of 16.";
  return text;
}

}  // namespace troupe::train
