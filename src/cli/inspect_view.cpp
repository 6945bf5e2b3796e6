#include "cli/inspect_view.h"

#include <algorithm>
#include <cstdio>
#include <ctime>

namespace troupe::cli {

namespace {

const std::vector<std::string> kColumns = {"name", "kind", "node", "rank", "state", "step", "mailbox", "msgs/s", "busy%", "bytes"};

std::string clock_time(double unix_seconds) {
  const std::time_t t = static_cast<std::time_t>(unix_seconds);
  std::tm tm{};
  localtime_r(&t, &tm);
  char out[16];
  std::strftime(out, sizeof out, "%H:%M:%S", &tm);
  return out;
}

std::string eta(double seconds) {
  if (seconds < 0) return "-";
  char out[32];
  std::snprintf(out, sizeof out, "%dh%02dm%02ds", static_cast<int>(seconds / 3600),
                static_cast<int>(seconds / 60) % 60, static_cast<int>(seconds) % 60);
  return out;
}

std::string bytes(double b) {
  char out[32];
  if (b >= 1 << 30) std::snprintf(out, sizeof out, "%.1fG", b / (1 << 30));
  else if (b >= 1 << 20) std::snprintf(out, sizeof out, "%.1fM", b / (1 << 20));
  else if (b >= 1 << 10) std::snprintf(out, sizeof out, "%.1fK", b / (1 << 10));
  else std::snprintf(out, sizeof out, "%.0f", b);
  return out;
}

// The actor's error; else what its thread began last (a stage's unit, the optimizer), with how
// long ago and its collective when that is a while: a rank that has stopped moving shows where,
// and the numbers of the ranks' collectives show who the others wait for.
std::string last_column(const nlohmann::json& a) {
  auto error = a.at("last_error").get<std::string>();
  if (!error.empty()) return error;
  auto doing = a.value("activity", std::string());
  const auto quiet = a.value("quiet_seconds", 0.0);
  if (doing.empty() || quiet < 10) return doing;
  doing += " (" + std::to_string(static_cast<int64_t>(quiet)) + " s ago)";
  if (const auto collective = a.value("collective", std::string()); !collective.empty()) doing += "; " + collective;
  return doing;
}

}  // namespace

void InspectView::update(const nlohmann::json& status) {
  job_ = status.at("job");
  const double now = status.value("time", 0.0);
  rows_.clear();
  std::map<std::string, nlohmann::json> seen;
  for (const auto& a : status.at("actors")) {
    Row r{a};
    const auto name = a.at("name").get<std::string>();
    if (auto p = previous_.find(name); p != previous_.end()) {
      const double dt = a.at("age_seconds").get<double>() - p->second.at("age_seconds").get<double>();
      if (dt > 0) {
        r.rate = (a.at("handled").get<double>() - p->second.at("handled").get<double>()) / dt;
        r.busy = 100 * (a.at("busy_seconds").get<double>() - p->second.at("busy_seconds").get<double>()) / dt;
      }
    } else if (a.at("age_seconds").get<double>() > 0) {
      r.busy = 100 * a.at("busy_seconds").get<double>() / a.at("age_seconds").get<double>();
    }
    auto& line = timeline_[name];
    const auto entry = clock_time(now) + "  " + a.at("state").get<std::string>() + "  step " +
                       std::to_string(a.at("step").get<int64_t>()) + "  mailbox " +
                       std::to_string(a.at("mailbox").get<uint64_t>());
    if (line.empty() || line.back().substr(10) != entry.substr(10)) line.push_back(entry);  // changes only
    if (line.size() > 200) line.pop_front();
    seen[name] = a;
    rows_.push_back(std::move(r));
  }
  previous_ = std::move(seen);
}

std::string InspectView::job_line() const {
  if (job_.is_null()) return "waiting for the job...";
  char line[512];
  std::snprintf(line, sizeof line,
                "%s | step %lld/%lld | loss %.4f | %.0f tok/s | MFU %.1f%% | ETA %s | last checkpoint %s | %lld node(s), "
                "%lld rank(s) | log_freq %lld",
                job_.value("state", "?").c_str(), static_cast<long long>(job_.value("step", 0)),
                static_cast<long long>(job_.value("steps", 0)), job_.value("loss", 0.0),
                job_.value("tokens_per_second", 0.0), 100 * job_.value("mfu", 0.0),
                eta(job_.value("eta_seconds", -1.0)).c_str(),
                job_.value("last_checkpoint", "").empty() ? "-" : job_.value("last_checkpoint", "").c_str(),
                static_cast<long long>(job_.value("nodes", 1)), static_cast<long long>(job_.value("ranks", 1)),
                static_cast<long long>(job_.value("log_freq", 0)));
  return line;
}

std::string InspectView::header() const {
  char line[256];
  std::snprintf(line, sizeof line, "%-22s %-17s %4s %4s %-20s %9s %7s %8s %6s %8s  %s", "ACTOR", "KIND", "NODE", "RANK",
                "STATE", "STEP:MB", "MAILBOX", "MSGS/S", "BUSY%", "BYTES", "ERROR, OR WHAT IT BEGAN LAST");
  return line;
}

std::vector<std::string> InspectView::rows(std::vector<std::string>* names) const {
  std::vector<const Row*> order;
  for (const auto& r : rows_) {
    const auto name = r.actor.at("name").get<std::string>();
    const auto state = r.actor.at("state").get<std::string>();
    if (!filter_.empty() && name.find(filter_) == std::string::npos && state.find(filter_) == std::string::npos)
      continue;
    order.push_back(&r);
  }
  const auto& col = kColumns[sort_];
  auto key = [&](const Row* r) -> nlohmann::json {
    if (col == "msgs/s") return r->rate;
    if (col == "busy%") return r->busy;
    if (col == "bytes") return r->actor.at("bytes_in_flight");
    return r->actor.at(col);
  };
  std::stable_sort(order.begin(), order.end(), [&](const Row* a, const Row* b) {
    // Numbers largest first (the busiest actors on top); names and states alphabetically.
    const auto ka = key(a), kb = key(b);
    return ka.is_string() ? ka < kb : kb < ka;
  });
  std::vector<std::string> out;
  for (const auto* r : order) {
    const auto& a = r->actor;
    const auto rank = a.at("rank").get<int64_t>();
    // The step, and the micro-batch within it where the actor reports one.
    const auto micro = a.value("micro_batch", int64_t{0});
    const auto step = std::to_string(a.at("step").get<int64_t>()) + (micro > 0 ? ":" + std::to_string(micro) : "");
    char line[512];
    std::snprintf(line, sizeof line, "%-22s %-17s %4lld %4s %-20s %9s %7llu %8.1f %6.0f %8s  %s",
                  a.at("name").get<std::string>().c_str(), a.at("kind").get<std::string>().c_str(),
                  static_cast<long long>(a.at("node").get<int64_t>()), rank < 0 ? "-" : std::to_string(rank).c_str(),
                  a.at("state").get<std::string>().c_str(), step.c_str(),
                  static_cast<unsigned long long>(a.at("mailbox").get<uint64_t>()), r->rate, r->busy,
                  bytes(a.at("bytes_in_flight").get<double>()).c_str(), last_column(a).c_str());
    out.emplace_back(line);
    if (names) names->push_back(a.at("name").get<std::string>());
  }
  return out;
}

std::vector<std::string> InspectView::detail(const std::string& name) const {
  std::vector<std::string> out;
  for (const auto& r : rows_) {
    if (r.actor.at("name") != name) continue;
    for (const auto& [k, v] : r.actor.items()) {
      if (k == "recent_messages") continue;
      out.push_back("  " + k + ": " + (v.is_string() ? v.get<std::string>() : v.dump()));
    }
    out.emplace_back("");
    out.emplace_back("  recent messages (oldest first):");
    for (const auto& m : r.actor.value("recent_messages", nlohmann::json::array())) out.push_back("    " + m.get<std::string>());
    char line[96];
    std::snprintf(line, sizeof line, "  messages/s: %.1f   busy: %.0f%%", r.rate, r.busy);
    out.emplace_back(line);
  }
  out.emplace_back("");
  out.emplace_back("  timeline (state changes seen by this console, newest last):");
  if (auto it = timeline_.find(name); it != timeline_.end())
    for (const auto& e : it->second) out.push_back("  " + e);
  if (name.starts_with("stage[")) {
    const auto map = moe_heat_map();
    if (!map.empty()) out.emplace_back("");
    for (const auto& line : map) out.push_back("  " + line);
  }
  return out;
}

void InspectView::update_moe(const nlohmann::json& moe) { moe_ = moe; }

std::vector<std::string> InspectView::moe_heat_map() const {
  if (!moe_.is_object() || !moe_.contains("layers") || moe_["layers"].empty()) return {};
  // Shades from an idle expert to one that took a quarter or more of its layer's tokens.
  static const std::string shades = " .:-=+*#%@";
  constexpr double kFull = 0.25;
  size_t name_width = 5;
  for (const auto& l : moe_["layers"]) name_width = std::max(name_width, l.value("name", std::string()).size());
  std::vector<std::string> out;
  char line[160];
  std::snprintf(line, sizeof line, "MoE load, step %lld: a column per expert, '%s' from none to >= %.0f%% of the layer's tokens",
                static_cast<long long>(moe_step()), shades.c_str(), 100 * kFull);
  out.emplace_back(line);
  for (const auto& l : moe_["layers"]) {
    const auto counts = l.value("tokens_per_expert", std::vector<double>{});
    double total = 0, most = 0;
    for (double c : counts) total += c, most = std::max(most, c);
    std::string row = l.value("name", std::string());
    row.resize(name_width, ' ');
    row += " |";
    for (double c : counts) {
      const double share = total > 0 ? c / total : 0;
      const auto level = std::min(shades.size() - 1, static_cast<size_t>(share / kFull * static_cast<double>(shades.size() - 1) + 0.5));
      row += shades[c > 0 ? std::max<size_t>(level, 1) : 0];
    }
    std::snprintf(line, sizeof line, "| busiest %.0f%% of %.0f tokens", total > 0 ? 100 * most / total : 0.0, total);
    out.push_back(row + line);
  }
  return out;
}

void InspectView::next_sort() { sort_ = (sort_ + 1) % kColumns.size(); }
const std::string& InspectView::sort_column() const { return kColumns[sort_]; }
bool InspectView::paused() const { return job_.is_object() && job_.value("state", "") == "paused"; }

}  // namespace troupe::cli
