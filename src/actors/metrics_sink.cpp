#include "actors/metrics_sink.h"
#include "actors/actor_failure.h"

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>

#include "actors/metrics_sink_protocol.h"
#include "metrics/tensorboard_writer.h"
#include "runtime/failpoint.h"
#include "runtime/process_memory.h"
#include "actors/status_board.h"

namespace troupe::actors {

namespace {

struct sink_state {
  std::shared_ptr<actors::StatusEntry> status;
  std::shared_ptr<actors::StatusBoard> board;
  std::ofstream jsonl;
  std::string jsonl_path;
  bool started = false;  // the job's first step has been written (earlier runs' later records dropped)
  std::unique_ptr<metrics::TensorBoardWriter> tensorboard;  // metrics.enable_tensorboard
  int64_t log_freq = 1, last_step = 0;
  // Throughput is averaged over the steps since the previous log line, as torchtitan does.
  int64_t tokens_since_log = 0;
  double seconds_since_log = 0, flops_since_log = 0;
};

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

// MFU over the logged interval: model FLOPs done / (time × the device's peak).
double mfu(double flops, double seconds, double peak) { return peak > 0 && seconds > 0 ? flops / seconds / peak : 0; }

// A mixture of experts' load at a glance: the busiest expert's share of its block's tokens, in
// the block where it is largest, and the load-balancing loss (the blocks' shares added).
std::string moe_summary(const train::StepStats& s) {
  const std::string share = ".tokens_per_expert.busiest_share", loss = ".aux_loss";
  double busiest = -1, aux = 0;
  bool any_aux = false;
  std::string where;
  // Expert parallelism: the busiest ep rank's rows against the mean, and the bytes moved.
  double rank_rows_max = 0, rank_rows_sum = 0, bytes = 0;
  int ep_ranks = 0;
  for (const auto& [name, value] : s.aux) {
    if (!name.starts_with("ep.rank")) continue;
    if (name.ends_with(".tokens")) rank_rows_max = std::max(rank_rows_max, value), rank_rows_sum += value, ++ep_ranks;
    if (name.ends_with(".all_to_all_bytes")) bytes += value;
  }
  for (const auto& [name, value] : s.aux) {
    if (name.ends_with(share) && value > busiest) {
      busiest = value;
      where = name.substr(0, name.size() - share.size());
    }
    if (name.starts_with("moe.") && name.ends_with(loss)) aux += value, any_aux = true;
  }
  if (busiest < 0) return {};
  if (where.starts_with("moe.layers.")) where = "layer " + where.substr(11);
  char line[128];
  std::snprintf(line, sizeof line, "  moe: busiest expert %.0f%% (%s)", 100.0 * busiest, where.c_str());
  std::string out = line;
  if (any_aux) {
    std::snprintf(line, sizeof line, "  aux_loss: %.4f", aux);
    out += line;
  }
  if (ep_ranks > 0 && rank_rows_sum > 0) {
    std::snprintf(line, sizeof line, "  ep: busiest rank %.2fx mean, all-to-all %.1f MB",
                  rank_rows_max * ep_ranks / rank_rows_sum, 2 * bytes / 1e6);
    out += line;
  }
  return out;
}

std::string console_line(const train::StepStats& s, double tps, double interval_mfu, uint64_t rss) {
  char memory[96];
  if (s.gpu_peak_reserved_bytes > 0)
    std::snprintf(memory, sizeof memory, "memory: %5.2fGiB active %5.2fGiB reserved (peak)",
                  static_cast<double>(s.gpu_peak_active_bytes) / kGiB, static_cast<double>(s.gpu_peak_reserved_bytes) / kGiB);
  else
    std::snprintf(memory, sizeof memory, "memory: %6.2fGiB(rss)", static_cast<double>(rss) / kGiB);
  char line[320];
  std::snprintf(line, sizeof line, "step: %5lld  loss: %8.4f  grad_norm: %8.4f  lr: %.4e  %s  tps: %.0f",
                static_cast<long long>(s.step), s.loss, s.grad_norm, s.lr, memory, tps);
  std::string out = line;
  if (s.peak_flops_per_second > 0) {
    std::snprintf(line, sizeof line, "  mfu: %.2f%%", 100.0 * interval_mfu);
    out += line;
  }
  out += moe_summary(s);
  return out;
}

nlohmann::json record(const train::StepStats& s, uint64_t rss) {
  nlohmann::json r = {{"step", s.step},
          {"loss", s.loss},
          {"grad_norm", s.grad_norm},
          {"lr", s.lr},
          {"tokens", s.tokens},
          {"wall_seconds", s.wall_seconds},
          {"compute_seconds", s.compute_seconds},
          {"data_wait_seconds", s.data_wait_seconds},
          {"tps", s.tokens / s.wall_seconds},
          {"mfu", mfu(s.model_flops, s.wall_seconds, s.peak_flops_per_second)},
          {"gpu_peak_active_bytes", s.gpu_peak_active_bytes},
          {"gpu_peak_reserved_bytes", s.gpu_peak_reserved_bytes},
          {"rss_bytes", rss}};
  for (const auto& [name, value] : s.aux) r["aux/" + name] = value;
  return r;
}

// The TensorBoard scalars of one step: the values of its metrics.jsonl record, as float32.
std::vector<std::pair<std::string, float>> tensorboard_scalars(const train::StepStats& s, uint64_t rss) {
  std::vector<std::pair<std::string, float>> out{{"loss", static_cast<float>(s.loss)},
                                                 {"lr", static_cast<float>(s.lr)},
                                                 {"grad_norm", static_cast<float>(s.grad_norm)},
                                                 {"tps", static_cast<float>(s.tokens / s.wall_seconds)}};
  for (const auto& [name, value] : s.aux) out.emplace_back("aux/" + name, static_cast<float>(value));
  if (s.peak_flops_per_second > 0)
    out.emplace_back("mfu", static_cast<float>(mfu(s.model_flops, s.wall_seconds, s.peak_flops_per_second)));
  if (s.gpu_peak_reserved_bytes > 0) {
    out.emplace_back("memory/gpu_peak_active_gib", static_cast<float>(static_cast<double>(s.gpu_peak_active_bytes) / kGiB));
    out.emplace_back("memory/gpu_peak_reserved_gib",
                     static_cast<float>(static_cast<double>(s.gpu_peak_reserved_bytes) / kGiB));
  } else {
    out.emplace_back("memory/rss_gib", static_cast<float>(static_cast<double>(rss) / kGiB));
  }
  return out;
}

// A failed write ends the job (the sink's exception handler): a run whose metrics are lost must
// not look finished.
void write_tensorboard(sink_state& st, int64_t step, const std::vector<std::pair<std::string, float>>& scalars) {
  if (st.tensorboard) st.tensorboard->add_scalars(step, scalars);
}

// A step's row of the page's charts: its metrics.jsonl record's values.
void add_history(actors::StepRecord& steps, const nlohmann::json& r) {
  const bool gpu = r.value("gpu_peak_reserved_bytes", 0.0) > 0;
  steps.add_step({r.value("step", 0.0), r.value("loss", 0.0), r.value("tps", 0.0), r.value("mfu", 0.0), r.value("lr", 0.0),
                  r.value("grad_norm", 0.0), gpu ? r.value("gpu_peak_active_bytes", 0.0) : r.value("rss_bytes", 0.0)},
                 gpu ? "gpu_active" : "rss");
}

// Before the job's first step (s) is written: the records of steps s and later that an earlier
// run left are dropped, so a resumed run (or a new one in a used folder) leaves one record per
// step. The file is rewritten under a temporary name and renamed over the old one.
// The kept records also start the page's history, so that it shows the whole run.
void start_at(sink_state& st, int64_t first_step) {
  if (st.tensorboard) st.tensorboard->start_at(first_step);
  if (st.jsonl_path.empty()) return;
  if (!std::filesystem::is_regular_file(st.jsonl_path)) return;
  std::vector<std::string> kept;
  size_t lines = 0;
  {
    std::ifstream in(st.jsonl_path);
    for (std::string line; std::getline(in, line); ++lines) {
      const auto record = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (!record.is_object() || !record.contains("step") || !record["step"].is_number_integer()) continue;
      const auto step = record["step"].get<int64_t>();
      if (step >= first_step) continue;
      kept.push_back(line);
      if (record.contains("loss") && record["loss"].is_number()) add_history(st.board->steps(), record);
      if (record.contains("validation_loss") && record["validation_loss"].is_number())
        st.board->steps().add_validation(step, record["validation_loss"].get<double>());
    }
  }
  if (kept.size() == lines) return;
  const auto tmp = st.jsonl_path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    for (const auto& line : kept) out << line << '\n';
    out.flush();
    if (!out) throw std::runtime_error("cannot write " + tmp);
  }
  std::error_code ec;
  std::filesystem::rename(tmp, st.jsonl_path, ec);
  if (ec) throw std::runtime_error("cannot rename " + tmp + " to " + st.jsonl_path + ": " + ec.message());
  st.jsonl.close();
  st.jsonl.open(st.jsonl_path, std::ios::app);
  if (!st.jsonl) throw std::runtime_error("cannot open " + st.jsonl_path + " for writing");
}

std::string jsonl_path(const config::JobConfig& cfg, int rank) {
  const auto name = cfg.metrics.save_for_all_ranks ? "metrics_rank" + std::to_string(rank) + ".jsonl"
                                                   : std::string("metrics.jsonl");
  return (std::filesystem::path(cfg.job.dump_folder) / name).string();
}

// Flushed per line: a process that must leave at once (a lost node) keeps every logged step.
void write_line(sink_state& st, const std::string& line) {
  st.jsonl << line << '\n' << std::flush;
  if (!st.jsonl) throw std::runtime_error("cannot write " + st.jsonl_path);
}

// The job line of the inspection endpoint: this step's rate, an ETA from the recent steps.
void publish_job(sink_state& s, const train::StepStats& stats) {
  const double tps = stats.wall_seconds > 0 ? static_cast<double>(stats.tokens) / stats.wall_seconds : 0;
  s.board->update_job([&](actors::JobStatus& j) {
    j.step = stats.step;
    j.loss = stats.loss;
    j.tokens_per_second = tps;
    j.mfu = mfu(stats.model_flops, stats.wall_seconds, stats.peak_flops_per_second);
    j.gpu_peak_active_bytes = stats.gpu_peak_active_bytes;
    j.lr = stats.lr;
    j.grad_norm = stats.grad_norm;
    j.eta_seconds = static_cast<double>(j.steps - stats.step) * stats.wall_seconds;
  });
}

caf::behavior metrics_sink(caf::stateful_actor<sink_state>* self, config::JobConfig cfg, int rank,
                           std::shared_ptr<actors::StatusBoard> board) {
  auto& st = self->state;
  st.status = board->enroll("metrics_sink");
  end_on_exception(self, "metrics_sink");
  runtime::failpoint("metrics_sink.start", rank);
  st.board = board;
  st.log_freq = cfg.metrics.log_freq;
  board->update_job([&](actors::JobStatus& j) {
    j.steps = cfg.training.steps;
    j.log_freq = cfg.metrics.log_freq;
  });
  st.last_step = cfg.training.steps;
  // Only one rank writes unless every rank is asked to.
  // A folder or file that cannot be written ends the job here, before its first step.
  if (rank == 0 || cfg.metrics.save_for_all_ranks) {
    st.jsonl_path = jsonl_path(cfg, rank);
    std::error_code ec;
    std::filesystem::create_directories(cfg.job.dump_folder, ec);
    if (ec || !std::filesystem::is_directory(cfg.job.dump_folder))
      throw std::runtime_error("cannot create job.dump_folder " + cfg.job.dump_folder + ": " +
                               (ec ? ec.message() : std::string("a file is in the way")));
    st.jsonl.open(st.jsonl_path, std::ios::app);
    if (!st.jsonl) throw std::runtime_error("cannot open " + st.jsonl_path + " for writing");
    if (cfg.metrics.enable_tensorboard)
      st.tensorboard = std::make_unique<metrics::TensorBoardWriter>(
          (std::filesystem::path(cfg.job.dump_folder) / "tb").string(),
          cfg.metrics.save_for_all_ranks ? ".rank" + std::to_string(rank) : std::string());
  }
  st.status->set_state("idle");
  return {
      [=](metrics_atom, train::StepStats stats) {
        auto& s = self->state;
        s.status->on_message(self);
        s.status->set_step(stats.step);
        const auto rss = runtime::resident_bytes();
        s.tokens_since_log += stats.tokens;
        s.seconds_since_log += stats.wall_seconds;
        s.flops_since_log += stats.model_flops;
        if (!s.started) {
          start_at(s, stats.step);
          s.started = true;
        }
        const auto line = record(stats, rss);
        if (s.jsonl.is_open()) write_line(s, line.dump());
        write_tensorboard(s, stats.step, tensorboard_scalars(stats, rss));
        add_history(s.board->steps(), line);
        publish_job(s, stats);
        if (stats.step == 1 || stats.step % s.log_freq == 0 || stats.step == s.last_step) {
          std::cout << console_line(stats, s.tokens_since_log / s.seconds_since_log,
                                    mfu(s.flops_since_log, s.seconds_since_log, stats.peak_flops_per_second), rss)
                    << std::endl;
          s.tokens_since_log = 0;
          s.seconds_since_log = s.flops_since_log = 0;
        }
      },
      [=](validation_atom, int64_t step, double loss) {
        auto& s = self->state;
        s.status->on_message(self);
        const double perplexity = std::exp(loss);
        s.board->steps().add_validation(step, loss);
        if (s.jsonl.is_open())
          write_line(s, nlohmann::json{{"step", step}, {"validation_loss", loss}, {"validation_perplexity", perplexity}}
                            .dump());
        write_tensorboard(s, step, {{"validation_loss", static_cast<float>(loss)},
                                    {"validation_perplexity", static_cast<float>(perplexity)}});
        char line[128];
        std::snprintf(line, sizeof line, "validate: step %lld  loss %.4f  perplexity %.4f", static_cast<long long>(step),
                      loss, perplexity);
        std::cout << line << std::endl;
      },
      [=](log_freq_atom, int64_t n) {
        auto& s = self->state;
        s.status->on_message(self);
        if (n < 1) return;
        s.log_freq = n;
        s.board->update_job([&](actors::JobStatus& j) { j.log_freq = n; });
        std::cout << "metrics: log_freq is now " << n << std::endl;
      },
      [=](log_atom, const std::string& line) {
        self->state.status->on_message(self);
        std::cout << line << std::endl;
      },
      [=](flush_atom) {
        auto& s = self->state;
        s.status->on_message(self);
        if (s.jsonl.is_open()) s.jsonl.flush();
        std::cout.flush();
        return !s.jsonl.is_open() || static_cast<bool>(s.jsonl);
      },
      [=](status_atom) {
        self->state.status->on_message(self);
        return self->state.status->snapshot();
      },
  };
}

}  // namespace

caf::actor spawn_metrics_sink(caf::actor_system& sys, const config::JobConfig& cfg, int rank,
                              std::shared_ptr<actors::StatusBoard> board) {
  return sys.spawn<caf::detached>(metrics_sink, cfg, rank, std::move(board));
}

}  // namespace troupe::actors
