#include "cli/inspect_server.h"

#include <httplib.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <sstream>
#include <thread>

#include "cli/inspect_page.h"
#include "actors/status_board.h"

namespace troupe::cli {

using actors::JobStatus;

namespace {

nlohmann::json job_json(const JobStatus& j) {
  return {{"state", j.state},
          {"step", j.step},
          {"steps", j.steps},
          {"loss", j.loss},
          {"tokens_per_second", j.tokens_per_second},
          {"mfu", j.mfu},
          {"eta_seconds", j.eta_seconds},
          {"gpu_peak_active_bytes", j.gpu_peak_active_bytes},
          {"log_freq", j.log_freq},
          {"last_checkpoint", j.last_checkpoint},
          {"nodes", j.nodes},
          {"ranks", j.ranks},
          {"lr", j.lr},
          {"grad_norm", j.grad_norm}};
}

// A rank's last step, split as the page shows it: compute is what is left of the trainer's
// step once the waits for collectives and the optimizer are taken out.
nlohmann::json rank_json(const actors::RankStep& r) {
  const auto& s = r.last;
  const bool gpu = s.gpu_peak_active_bytes > 0;
  return {{"rank", s.rank},
          {"node", s.node},
          {"step", s.step},
          {"step_seconds", s.compute_seconds + s.data_wait_seconds},
          {"compute_seconds", std::max(0.0, s.compute_seconds - s.comm_wait_seconds - s.optimizer_seconds)},
          {"comm_wait_seconds", s.comm_wait_seconds},
          {"data_wait_seconds", s.data_wait_seconds},
          {"optimizer_seconds", s.optimizer_seconds},
          {"memory_bytes", gpu ? s.gpu_peak_active_bytes : s.rss_bytes},
          {"memory_kind", gpu ? "gpu_active" : "rss"},
          {"recent_step_seconds", r.recent_step_seconds},
          {"recent_memory_bytes", r.recent_memory_bytes}};
}

nlohmann::json history_json(const actors::StepRecord& steps, double after) {
  const auto h = steps.history_after(after);
  nlohmann::json validation = nlohmann::json::array();
  for (const auto& [step, loss] : h.validation) validation.push_back({step, loss});
  return {{"columns", {"step", "loss", "tokens_per_second", "mfu", "lr", "grad_norm", "memory_bytes"}},
          {"memory_kind", h.memory_kind},
          {"rows", h.rows},
          {"validation", validation}};
}

nlohmann::json moe_json(const actors::StepRecord& steps) {
  const auto [step, loads] = steps.moe_loads();
  nlohmann::json layers = nlohmann::json::array();
  for (const auto& [name, counts] : loads) {
    // "moe.layers.3.tokens_per_expert" -> "layers.3"
    std::string layer = name;
    if (layer.starts_with("moe.")) layer = layer.substr(4);
    if (const auto dot = layer.rfind(".tokens_per_expert"); dot != std::string::npos) layer = layer.substr(0, dot);
    layers.push_back({{"name", layer}, {"tokens_per_expert", counts}});
  }
  return {{"step", step}, {"layers", layers}};
}

nlohmann::json pipeline_json(const actors::StepRecord& steps) {
  const auto [step, per_rank] = steps.pipeline();
  nlohmann::json ranks = nlohmann::json::array();
  for (const auto& [rank, spans] : per_rank) {
    nlohmann::json actions = nlohmann::json::array();
    for (const auto& a : spans)
      actions.push_back({{"op", a.op.starts_with("send") ? "send" : a.op.starts_with("recv") ? "recv" : a.op}, {"stage", a.stage}, {"microbatch", a.microbatch}, {"start_ms", a.start_ms},
                         {"end_ms", a.end_ms}});
    ranks.push_back({{"rank", rank}, {"actions", actions}});
  }
  return {{"step", step}, {"ranks", ranks}};
}

nlohmann::json actor_json(const actors::actor_status& a) {
  return {{"name", a.name},
          {"kind", a.kind},
          {"node", a.node},
          {"rank", a.rank},
          {"state", a.state},
          {"step", a.step},
          {"micro_batch", a.micro_batch},
          {"mailbox", a.mailbox},
          {"handled", a.handled},
          {"busy_seconds", a.busy_seconds},
          {"age_seconds", a.age_seconds},
          {"bytes_in_flight", a.bytes_in_flight},
          {"last_error", a.last_error},
          {"detail", a.detail},
          {"activity", a.activity},
          {"quiet_seconds", a.quiet_seconds},
          {"collective", a.collective},
          {"recent_messages", a.recent_messages}};
}

std::string labels(const actors::actor_status& a) {
  return "{name=\"" + a.name + "\",kind=\"" + a.kind + "\",node=\"" + std::to_string(a.node) + "\",rank=\"" +
         std::to_string(a.rank) + "\"}";
}

}  // namespace

std::string status_json(const StatusBoard& board) {
  nlohmann::json actors = nlohmann::json::array();
  for (const auto& a : board.snapshot()) actors.push_back(actor_json(a));
  nlohmann::json ranks = nlohmann::json::array();
  for (const auto& r : board.steps().rank_steps()) ranks.push_back(rank_json(r));
  auto job = job_json(board.job());
  const auto validation = board.steps().last_validation_loss();
  job["validation_loss"] = validation ? nlohmann::json(*validation) : nlohmann::json();
  job["moe_step"] = board.steps().moe_step();
  job["timeline_step"] = board.steps().pipeline_step();
  const double now = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  return nlohmann::json{{"time", now}, {"job", job}, {"rank_steps", ranks}, {"actors", actors}}.dump();
}

std::string prometheus_text(const StatusBoard& board) {
  const auto job = board.job();
  std::ostringstream out;
  auto gauge = [&](const char* name, const char* help, double value) {
    out << "# HELP " << name << ' ' << help << "\n# TYPE " << name << " gauge\n" << name << ' ' << value << '\n';
  };
  gauge("troupe_step", "Last finished training step.", static_cast<double>(job.step));
  gauge("troupe_loss", "Training loss of the last step.", job.loss);
  gauge("troupe_tokens_per_second", "Tokens per second of the last step, all ranks.", job.tokens_per_second);
  gauge("troupe_mfu", "Model FLOPs utilisation of the last step (0..1).", job.mfu);
  gauge("troupe_gpu_peak_active_bytes", "Peak active GPU memory of the last step, largest rank.",
        static_cast<double>(job.gpu_peak_active_bytes));
  gauge("troupe_paused", "1 while the job is paused.", job.state == "paused" ? 1 : 0);
  const auto actors = board.snapshot();
  auto family = [&](const char* name, const char* type, const char* help, auto value) {
    out << "# HELP " << name << ' ' << help << "\n# TYPE " << name << ' ' << type << '\n';
    for (const auto& a : actors) out << name << labels(a) << ' ' << value(a) << '\n';
  };
  family("troupe_actor_mailbox", "gauge", "Messages waiting in the actor's mailbox.",
         [](const actors::actor_status& a) { return static_cast<double>(a.mailbox); });
  family("troupe_actor_messages_total", "counter", "Messages the actor has handled.",
         [](const actors::actor_status& a) { return static_cast<double>(a.handled); });
  family("troupe_actor_busy_seconds_total", "counter", "Seconds the actor has spent busy.",
         [](const actors::actor_status& a) { return a.busy_seconds; });
  // An alert on this catches a rank that has stopped moving long before the job's own stall watch.
  family("troupe_actor_quiet_seconds", "gauge",
         "Seconds since the actor's state, micro-batch or activity last moved (a stage inside a step beats per unit).",
         [](const actors::actor_status& a) { return a.quiet_seconds; });
  return out.str();
}

constexpr size_t kInspectWorkers = 64;

struct InspectServer::Impl {
  httplib::Server server;
  std::thread thread;
  int port = 0;
  std::string note;
};

InspectServer::InspectServer(const config::JobConfig& cfg, std::shared_ptr<StatusBoard> board, Control control)
    : impl_(std::make_unique<Impl>()) {
  auto& svr = impl_->server;
  // Connections that send nothing, or dribble their headers, hold a worker at most this long,
  // and the pool is wide enough that a few hundred of them leave workers for real requests.
  svr.new_task_queue = [] { return new httplib::ThreadPool(kInspectWorkers); };
  svr.set_read_timeout(0, 500'000);  // the request line and headers, and each read of a body
  svr.set_write_timeout(2, 0);
  svr.set_keep_alive_timeout(2);
  svr.set_keep_alive_max_count(100);
  svr.set_payload_max_length(64 * 1024);  // the controls take no body
  const std::string token = cfg.inspect.token;
  const bool checkpoints = cfg.checkpoint.enable;
  // Every request carries the token when one is set (header, or ?token= for the web page).
  svr.set_pre_routing_handler([token](const httplib::Request& req, httplib::Response& res) {
    if (token.empty()) return httplib::Server::HandlerResponse::Unhandled;
    if (req.get_header_value("Authorization") == "Bearer " + token || req.get_param_value("token") == token)
      return httplib::Server::HandlerResponse::Unhandled;
    res.status = 401;
    res.set_content("{\"error\": \"missing or wrong token\"}", "application/json");
    return httplib::Server::HandlerResponse::Handled;
  });
  svr.Get("/api/status", [board](const httplib::Request&, httplib::Response& res) {
    res.set_content(status_json(*board), "application/json");
  });
  svr.Get("/api/history", [board](const httplib::Request& req, httplib::Response& res) {
    double after = -1;
    if (req.has_param("after")) {
      const auto text = req.get_param_value("after");
      char* end = nullptr;
      after = std::strtod(text.c_str(), &end);
      if (text.empty() || *end != '\0') {
        res.status = 400;
        res.set_content(nlohmann::json{{"error", "after needs a step number, got '" + text + "'"}}.dump(),
                        "application/json");
        return;
      }
    }
    res.set_content(history_json(board->steps(), after).dump(), "application/json");
  });
  svr.Get("/api/moe", [board](const httplib::Request&, httplib::Response& res) {
    res.set_content(moe_json(board->steps()).dump(), "application/json");
  });
  svr.Get("/api/timeline", [board](const httplib::Request&, httplib::Response& res) {
    res.set_content(pipeline_json(board->steps()).dump(), "application/json");
  });
  svr.Get("/metrics", [board](const httplib::Request&, httplib::Response& res) {
    res.set_content(prometheus_text(*board), "text/plain; version=0.0.4");
  });
  auto serve = [&svr](const char* path, std::string_view body, const char* type) {
    svr.Get(path, [body, type](const httplib::Request&, httplib::Response& res) {
      res.set_content(body.data(), body.size(), type);
    });
  };
  serve("/", kInspectPage, "text/html; charset=utf-8");
  serve("/dygraph.min.js", kDygraphJs, "application/javascript; charset=utf-8");
  serve("/dygraph.min.css", kDygraphCss, "text/css; charset=utf-8");
  auto accept = [](httplib::Response& res, const std::string& action) {
    res.status = 202;
    res.set_content(nlohmann::json{{"accepted", action}}.dump(), "application/json");
  };
  auto refuse = [](httplib::Response& res, int status, const std::string& why) {
    res.status = status;
    res.set_content(nlohmann::json{{"error", why}}.dump(), "application/json");
  };
  for (const std::string action : {"pause", "resume"})
    svr.Post("/api/" + action, [=](const httplib::Request&, httplib::Response& res) {
      control(action, 0);
      accept(res, action);
    });
  svr.Post("/api/checkpoint", [=](const httplib::Request&, httplib::Response& res) {
    if (!checkpoints) return refuse(res, 409, "checkpoint.enable is false in this job");
    control("checkpoint", 0);
    accept(res, "checkpoint");
  });
  svr.Post("/api/log_freq", [=](const httplib::Request& req, httplib::Response& res) {
    const auto text = req.get_param_value("value");
    int64_t n = 0;
    try {
      size_t used = 0;
      n = std::stoll(text, &used);
      if (used != text.size()) n = 0;
    } catch (const std::exception&) {
      n = 0;
    }
    if (n < 1) return refuse(res, 400, "log_freq needs ?value=N with N >= 1, got '" + text + "'");
    control("log_freq", n);
    accept(res, "log_freq");
  });
  const auto& host = cfg.inspect.host;
  const int wanted = static_cast<int>(cfg.inspect.port);
  if (wanted > 0 && svr.bind_to_port(host, wanted)) {
    impl_->port = wanted;
  } else {
    impl_->port = svr.bind_to_any_port(host);
    if (impl_->port <= 0) throw std::runtime_error("inspect: cannot listen on " + host + " (inspect.host)");
  }
  impl_->note = "inspect: http://" + host + ":" + std::to_string(impl_->port) + "/ (troupe inspect " + host + ":" +
                std::to_string(impl_->port) + ")";
  if (wanted > 0 && impl_->port != wanted) impl_->note += "; port " + std::to_string(wanted) + " was busy";
  impl_->thread = std::thread([this] { impl_->server.listen_after_bind(); });
  // A stop() before the loop runs is lost and the join would wait forever (a job that fails at
  // once ends the server at once): the server is returned running.
  for (int i = 0; i < 500 && !impl_->server.is_running(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(2));
}

InspectServer::~InspectServer() {
  impl_->server.stop();
  if (impl_->thread.joinable()) impl_->thread.join();
}

int InspectServer::port() const { return impl_->port; }
const std::string& InspectServer::note() const { return impl_->note; }

}  // namespace troupe::cli
