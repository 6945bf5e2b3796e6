// What `troupe inspect` shows, as text lines: the job line and one row per actor with rates
// computed between two snapshots (messages/s, busy %), sorted and filtered; and one actor's
// timeline as the console sampled it. Plain strings, so the ncurses console, `--once` and the
// tests share it.
#pragma once
#include <nlohmann/json.hpp>

#include <deque>
#include <map>
#include <string>
#include <vector>

namespace troupe::cli {

class InspectView {
 public:
  // Feeds one /api/status document.
  void update(const nlohmann::json& status);

  std::string job_line() const;
  std::string header() const;
  // Rows in the current order and filter; `names` gets each row's actor name.
  std::vector<std::string> rows(std::vector<std::string>* names = nullptr) const;
  // The selected actor: its fields, and its sampled timeline (newest last); a stage's also shows
  // the MoE load heat map when the job has one.
  std::vector<std::string> detail(const std::string& name) const;

  // Feeds one /api/moe document; moe_step() is the step of the last one fed (0: none), so that
  // the console asks again only when the job's moe_step moves.
  void update_moe(const nlohmann::json& moe);
  int64_t moe_step() const { return moe_.is_object() ? moe_.value("step", int64_t{0}) : 0; }
  // The last step's tokens per expert of each MoE layer: a row per layer, a character per
  // expert, darker for a larger share of the layer's tokens; empty when there is none.
  std::vector<std::string> moe_heat_map() const;

  // Sort columns: name, kind, node, rank, state, step, mailbox, msgs/s, busy%, bytes.
  void next_sort();
  const std::string& sort_column() const;
  void set_filter(std::string text) { filter_ = std::move(text); }
  const std::string& filter() const { return filter_; }
  bool paused() const;

 private:
  struct Row {
    nlohmann::json actor;
    double rate = 0, busy = 0;
  };
  nlohmann::json job_, moe_;
  std::vector<Row> rows_;
  std::map<std::string, nlohmann::json> previous_;
  std::map<std::string, std::deque<std::string>> timeline_;  // per actor: "hh:mm:ss state step"
  size_t sort_ = 0;
  std::string filter_;
};

}  // namespace troupe::cli
