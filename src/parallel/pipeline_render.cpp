#include "parallel/pipeline_render.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>

namespace troupe::parallel::pp {

namespace {

std::string label(const Schedule& s, const Action& a) {
  std::string l = op_name(a.op) + std::to_string(a.microbatch);
  if (s.stages() > s.ranks) l += "s" + std::to_string(a.stage);
  return l;
}

std::string fixed(double v, int digits) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

}  // namespace

std::string render_timeline(const Schedule& s, const Timeline& t, const Costs& costs) {
  // The smallest cost is one column.
  double unit = 1e300;
  for (Op op : {Op::forward, Op::backward, Op::backward_input, Op::backward_weight})
    if (costs.of(op) > 0) unit = std::min(unit, costs.of(op));
  const int columns = static_cast<int>(std::ceil(t.makespan / unit - 1e-9));
  size_t width = 2;
  for (const auto& rank : t.per_rank)
    for (const auto& x : rank)
      if (is_compute(x.action.op)) width = std::max(width, label(s, x.action).size());
  width += 1;
  std::ostringstream out;
  out << s.name << ": " << s.ranks << " ranks, " << s.stages() << " stages, " << s.microbatches << " micro-batches\n";
  for (int r = 0; r < s.ranks; ++r) {
    std::vector<std::string> cells(static_cast<size_t>(columns), ".");
    for (const auto& x : t.per_rank[r]) {
      if (!is_compute(x.action.op)) continue;
      const int first = static_cast<int>(std::lround(x.start / unit));
      const int last = static_cast<int>(std::lround(x.end / unit));
      for (int c = first; c < last && c < columns; ++c) cells[c] = c == first ? label(s, x.action) : "-";
    }
    std::string row = "rank " + std::to_string(r) + " |";
    for (auto& c : cells) row += c + std::string(width - c.size(), ' ');
    out << row << "\n";
  }
  out << "bubble " << fixed(100 * t.bubble(), 1) << "%";
  if (s.name == "GPipe" || s.name == "1F1B")
    out << " (formula (p-1)/(m+p-1): " << fixed(100 * one_f_one_b_bubble(s.ranks, s.microbatches), 1) << "%)";
  out << "; peak in flight per rank:";
  for (int p : t.peak_in_flight) out << " " << p;
  out << "\n";
  return out.str();
}

std::string chrome_trace(const Timeline& t, double microseconds_per_unit, const std::string& process_name,
                         int first_rank) {
  auto events = nlohmann::json::array();
  events.push_back({{"name", "process_name"}, {"ph", "M"}, {"pid", 0}, {"args", {{"name", process_name}}}});
  for (size_t i = 0; i < t.per_rank.size(); ++i) {
    const int r = first_rank + static_cast<int>(i);
    events.push_back({{"name", "thread_name"}, {"ph", "M"}, {"pid", 0}, {"tid", r},
                      {"args", {{"name", "rank " + std::to_string(r)}}}});
    for (const auto& x : t.per_rank[i]) {
      const auto& a = x.action;
      nlohmann::json e{{"name", std::string(op_name(a.op)) + std::to_string(a.microbatch)},
                       {"cat", op_name(a.op)},
                       {"pid", 0},
                       {"tid", r},
                       {"ts", x.start * microseconds_per_unit},
                       {"args", {{"stage", a.stage}, {"microbatch", a.microbatch}}}};
      if (is_compute(a.op)) {
        e["ph"] = "X";
        e["dur"] = (x.end - x.start) * microseconds_per_unit;
      } else {
        e["ph"] = "i";
        e["s"] = "t";
        e["args"]["peer"] = a.peer;
      }
      events.push_back(std::move(e));
    }
  }
  return nlohmann::json{{"traceEvents", events}, {"displayTimeUnit", "ms"}}.dump(1);
}

}  // namespace troupe::parallel::pp
