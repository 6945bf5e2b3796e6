#include "actors/status_board.h"

#include <algorithm>
#include <cstdio>
#include <cstring>

#include <unistd.h>

namespace troupe::actors {

namespace {

bool waiting(const char* state) {
  // "running" is the supervisor's: the job runs, the supervisor waits.
  return std::strcmp(state, "idle") == 0 || std::strcmp(state, "running") == 0 || std::strncmp(state, "waiting", 7) == 0 ||
         std::strcmp(state, "paused") == 0 || std::strcmp(state, "starting") == 0 || std::strcmp(state, "done") == 0;
}

std::string state_and_progress(const actors::actor_status& a) {
  auto line = "state " + a.state + ", step " + std::to_string(a.step);
  if (a.micro_batch > 0) line += ", micro-batch " + std::to_string(a.micro_batch);
  if (!a.activity.empty()) line += ", last began: " + a.activity;
  line += ", quiet for " + std::to_string(static_cast<int64_t>(a.quiet_seconds)) + " s";
  if (!a.collective.empty()) line += ", collective: " + a.collective;
  return line;
}

}  // namespace

int64_t StatusEntry::now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

StatusEntry::StatusEntry(std::string name, int64_t node) : name_(std::move(name)), node_(node), rank_(-1) {
  // "stage[3]": kind "stage", rank 3.
  const auto bracket = name_.find('[');
  kind_ = name_.substr(0, bracket);
  if (bracket != std::string::npos) rank_ = std::stoll(name_.substr(bracket + 1));
  born_ns_ = now_ns();
  progress_ns_.store(born_ns_, std::memory_order_relaxed);
}

void StatusEntry::set_step(int64_t step) {
  int64_t none = -1;
  first_step_.compare_exchange_strong(none, step, std::memory_order_relaxed);
  step_.store(step, std::memory_order_relaxed);
  progressed();
}

void StatusEntry::set_flight_recorder(std::shared_ptr<const comm::FlightRecorder> recorder) {
  std::lock_guard<std::mutex> lock(error_mutex_);
  recorder_ = std::move(recorder);
}

std::string StatusEntry::activity() const {
  const char* what = activity_.load(std::memory_order_relaxed);
  if (!what) return "";
  const auto unit = activity_unit_.load(std::memory_order_relaxed);
  return unit < 0 ? what : std::string(what) + " of unit " + std::to_string(unit);
}

std::chrono::nanoseconds StatusEntry::quiet(std::chrono::steady_clock::time_point now) const {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(now.time_since_epoch()) -
         std::chrono::nanoseconds(progress_ns_.load(std::memory_order_relaxed));
}

std::optional<std::string> StatusEntry::stalled(const StallLimits& limits,
                                                std::chrono::steady_clock::time_point now) const {
  const char* state = state_.load(std::memory_order_relaxed);
  const auto step = step_.load(std::memory_order_relaxed);
  // Only inside a step: building, connecting and restoring have timeouts of their own, and a
  // waiting actor waits for someone else (who is the stalled one).
  if (step < 1 || waiting(state) || std::strcmp(state, "failed") == 0) return std::nullopt;
  const auto limit = step == first_step_.load(std::memory_order_relaxed) ? limits.first_step : limits.step;
  const auto quiet_for = quiet(now);
  if (quiet_for <= limit) return std::nullopt;
  auto seen = snapshot();
  seen.quiet_seconds = std::chrono::duration<double>(quiet_for).count();
  return name_ + " made no progress (" + state_and_progress(seen) + ")";
}

void StatusEntry::set_state(const char* state) {
  const auto t = now_ns();
  const auto since = busy_since_ns_.load(std::memory_order_relaxed);
  if (since != 0) busy_total_ns_.fetch_add(t - since, std::memory_order_relaxed);
  busy_since_ns_.store(waiting(state) ? 0 : t, std::memory_order_relaxed);
  state_.store(state, std::memory_order_relaxed);
  progress_ns_.store(t, std::memory_order_relaxed);
}

namespace {
constexpr size_t kRecent = 8;
constexpr size_t kLongest = 96;  // characters of a message kept
}  // namespace

void StatusEntry::remember(const caf::type_erased_tuple& message) {
  // The atom and the small values; a large one (a step history) is cut.
  std::string text = "(";
  for (size_t i = 0; i < message.size() && text.size() < kLongest; ++i) {
    auto part = message.stringify(i);
    if (part.size() > 40) part = part.substr(0, 37) + "...";
    text += (i ? ", " : "") + part;
  }
  text += message.size() > 0 ? ")" : "()";
  std::lock_guard<std::mutex> lock(error_mutex_);
  if (recent_.size() < kRecent) recent_.push_back({now_ns(), std::move(text)});
  else recent_[next_recent_] = {now_ns(), std::move(text)};
  next_recent_ = (next_recent_ + 1) % kRecent;
}

void StatusEntry::set_error(std::string error) {
  std::lock_guard<std::mutex> lock(error_mutex_);
  last_error_ = std::move(error);
  set_state("failed");
}

void StatusEntry::set_detail(std::string detail) {
  std::lock_guard<std::mutex> lock(error_mutex_);
  detail_ = std::move(detail);
}

actors::actor_status StatusEntry::snapshot() const {
  actors::actor_status s;
  const auto t = now_ns();
  s.name = name_;
  s.kind = kind_;
  s.node = node_;
  s.rank = rank_;
  s.state = state_.load(std::memory_order_relaxed);
  s.step = step_.load(std::memory_order_relaxed);
  s.micro_batch = micro_batch_.load(std::memory_order_relaxed);
  s.mailbox = mailbox_.load(std::memory_order_relaxed);
  s.handled = handled_.load(std::memory_order_relaxed);
  s.bytes_in_flight = bytes_.load(std::memory_order_relaxed);
  const auto since = busy_since_ns_.load(std::memory_order_relaxed);
  s.busy_seconds = 1e-9 * static_cast<double>(busy_total_ns_.load(std::memory_order_relaxed) + (since ? t - since : 0));
  s.age_seconds = 1e-9 * static_cast<double>(t - born_ns_);
  std::lock_guard<std::mutex> lock(error_mutex_);
  s.last_error = last_error_;
  s.detail = detail_;
  s.activity = activity();
  s.quiet_seconds = 1e-9 * static_cast<double>(t - progress_ns_.load(std::memory_order_relaxed));
  if (recorder_) s.collective = recorder_->summary(std::chrono::system_clock::now());
  // Oldest first.
  for (size_t i = 0; i < recent_.size(); ++i) {
    const auto& h = recent_[(next_recent_ + i) % recent_.size()];
    char ago[32];
    std::snprintf(ago, sizeof ago, "%.1fs ago: ", 1e-9 * static_cast<double>(t - h.at_ns));
    s.recent_messages.push_back(ago + h.text);
  }
  return s;
}

std::string whereabouts(const actors::actor_status& a) {
  return a.name + (a.node > 0 ? ", node " + std::to_string(a.node) : "") + ": " + state_and_progress(a);
}

std::string stages_whereabouts(const std::vector<actors::actor_status>& actors, size_t most) {
  std::vector<const actors::actor_status*> stages;
  bool stepping = false;
  for (const auto& a : actors) {
    if (a.kind != "stage") continue;
    stages.push_back(&a);
    stepping = stepping || a.step > 0;
  }
  if (!stepping) return "";
  // A large job: the quietest ones, which are the likely culprits.
  const auto left_out = stages.size() > most ? stages.size() - most : 0;
  if (left_out > 0) {
    std::partial_sort(stages.begin(), stages.begin() + static_cast<std::ptrdiff_t>(most), stages.end(),
                      [](const auto* a, const auto* b) { return a->quiet_seconds > b->quiet_seconds; });
    stages.resize(most);
  }
  std::sort(stages.begin(), stages.end(), [](const auto* a, const auto* b) { return a->rank < b->rank; });
  std::string out;
  for (const auto* a : stages) out += (out.empty() ? "" : "; ") + whereabouts(*a);
  if (left_out > 0) out += "; " + std::to_string(left_out) + " more, less quiet";
  return out;
}

std::shared_ptr<StatusEntry> StatusBoard::enroll(const std::string& name) {
  auto entry = std::make_shared<StatusEntry>(name, node_);
  std::lock_guard<std::mutex> lock(mutex_);
  entries_.push_back(entry);
  threads_.push_back(static_cast<int>(gettid()));
  return entry;
}

std::vector<int> StatusBoard::enrolled_threads() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return threads_;
}

std::vector<actors::actor_status> StatusBoard::local_snapshot() const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<actors::actor_status> out;
  for (const auto& weak : entries_)
    if (auto e = weak.lock()) out.push_back(e->snapshot());
  return out;
}

std::optional<std::string> StatusBoard::find_stall(const std::string& kind, const StallLimits& limits) const {
  const auto now = std::chrono::steady_clock::now();
  std::lock_guard<std::mutex> lock(mutex_);
  std::string stalled, others;
  for (const auto& weak : entries_) {
    auto e = weak.lock();
    if (!e || e->kind() != kind) continue;
    if (auto stall = e->stalled(limits, now)) stalled += (stalled.empty() ? "" : "; ") + *stall;
    else others += (others.empty() ? "" : "; ") + whereabouts(e->snapshot());
  }
  if (stalled.empty()) return std::nullopt;
  return others.empty() ? stalled : stalled + "; the others: " + others;
}

std::vector<actors::actor_status> StatusBoard::snapshot() const {
  auto out = local_snapshot();
  std::lock_guard<std::mutex> lock(mutex_);
  for (const auto& [node, actors] : remote_) out.insert(out.end(), actors.begin(), actors.end());
  return out;
}

void StatusBoard::set_remote(int64_t node, std::vector<actors::actor_status> actors) {
  std::lock_guard<std::mutex> lock(mutex_);
  remote_[node] = std::move(actors);
}

void StatusBoard::update_job(const std::function<void(JobStatus&)>& change) {
  std::lock_guard<std::mutex> lock(mutex_);
  change(job_);
}

JobStatus StatusBoard::job() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return job_;
}

}  // namespace troupe::actors
