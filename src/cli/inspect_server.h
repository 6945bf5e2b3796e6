// The inspection endpoint of a `troupe` process (HTTP, [inspect] keys): the job line, each
// rank's last step and every actor's status as JSON (/api/status), the run's history
// (/api/history?after=STEP), the last MoE load per layer and expert (/api/moe), the last
// recorded pipeline step (/api/timeline), Prometheus text (/metrics), the web page (/) with its
// charting library, and controls (POST /api/pause, /api/resume, /api/checkpoint,
// /api/log_freq?value=N). It reads only the StatusBoard, so a request never
// waits for an actor that is computing; controls become messages to the node supervisor.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "config/job_config.h"

namespace troupe::actors { class StatusBoard; }

namespace troupe::cli {

using actors::StatusBoard;

class InspectServer {
 public:
  // action: "pause" | "resume" | "checkpoint" | "log_freq" (with value).
  using Control = std::function<void(const std::string& action, int64_t value)>;

  // Binds at once (a busy port falls back to any free one; `note` says so); std::runtime_error
  // when it cannot bind at all.
  InspectServer(const config::JobConfig& cfg, std::shared_ptr<StatusBoard> board, Control control);
  ~InspectServer();
  InspectServer(const InspectServer&) = delete;
  InspectServer& operator=(const InspectServer&) = delete;

  int port() const;
  const std::string& note() const;  // one line for the log: where it listens

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The JSON of /api/status (also what `troupe inspect --once --json` prints).
std::string status_json(const StatusBoard& board);
// Prometheus text format of /metrics.
std::string prometheus_text(const StatusBoard& board);

}  // namespace troupe::cli
