#include "comm/flight_recorder.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <iterator>
#include <stdexcept>
#include <system_error>

#include "checkpoint/file_io.h"

namespace troupe::comm {

namespace {

double unix_seconds(std::chrono::system_clock::time_point t) {
  return std::chrono::duration<double>(t.time_since_epoch()).count();
}

bool unfinished(const FlightRecorder::Entry& e) { return e.ended.time_since_epoch().count() == 0; }

std::string named(const FlightRecorder::Entry& e) {
  return e.op + " #" + std::to_string(e.seq) + " of " + e.group + " in step " + std::to_string(e.step);
}

}  // namespace

FlightRecorder::Group& FlightRecorder::group(const std::string& name) {
  auto it = std::find_if(groups_.begin(), groups_.end(), [&](const Group& g) { return g.name == name; });
  if (it == groups_.end()) it = groups_.insert(groups_.end(), Group{name});
  return *it;
}

void FlightRecorder::joined(const std::string& name, int rank, int size) {
  std::lock_guard lock(mutex_);
  auto& g = group(name);
  g.rank = rank;
  g.size = size;
}

std::vector<FlightRecorder::Group> FlightRecorder::groups() const {
  std::lock_guard lock(mutex_);
  return groups_;
}

void FlightRecorder::add_device_wait(std::function<double()> seconds) {
  size_t pending = 0;
  {
    std::lock_guard lock(mutex_);
    device_waits_.push_back(std::move(seconds));
    pending = device_waits_.size();
  }
  // Where nothing reads the count for a while (a long validation), the passed stalls (and their
  // CUDA events) still go.
  if (pending > 1024) waited_seconds();
}

double FlightRecorder::waited_seconds() const {
  std::vector<std::function<double()>> pending;
  {
    std::lock_guard lock(mutex_);
    pending.swap(device_waits_);
  }
  // Asked without the lock: a CUDA query stalled by a driver lock held elsewhere must not hold up
  // the NCCL watchdog, which ends entries under it.
  double passed = 0;
  std::erase_if(pending, [&](const auto& seconds) {
    const double s = seconds();
    if (s >= 0) passed += s;
    return s >= 0;
  });
  std::lock_guard lock(mutex_);
  device_waits_.insert(device_waits_.begin(), std::make_move_iterator(pending.begin()),
                       std::make_move_iterator(pending.end()));
  device_waited_ += passed;
  return device_waited_ + host_waited_seconds();
}

uint64_t FlightRecorder::issued(const std::string& group_name, const std::string& op, int64_t elements,
                                const std::string& dtype) {
  std::lock_guard lock(mutex_);
  Entry e;
  e.id = next_id_++;
  e.seq = ++group(group_name).issued;
  e.step = step_.load(std::memory_order_relaxed);
  e.group = group_name;
  e.op = op;
  e.dtype = dtype;
  e.elements = elements;
  e.issued = std::chrono::system_clock::now();
  if (capacity_ == 0) return e.id;
  if (ring_.size() == capacity_) ring_.pop_front();
  ring_.push_back(std::move(e));
  return ring_.back().id;
}

void FlightRecorder::ended(uint64_t id, bool failed) {
  std::lock_guard lock(mutex_);
  // Ids are consecutive in the ring.
  if (ring_.empty() || id < ring_.front().id || id > ring_.back().id) return;
  auto& e = ring_[id - ring_.front().id];
  e.ended = std::chrono::system_clock::now();
  e.failed = failed;
}

std::vector<FlightRecorder::Entry> FlightRecorder::entries() const {
  std::lock_guard lock(mutex_);
  return {ring_.begin(), ring_.end()};
}

std::string FlightRecorder::summary(std::chrono::system_clock::time_point now) const {
  auto seconds = [](auto d) {
    return std::to_string(std::max<int64_t>(std::chrono::duration_cast<std::chrono::seconds>(d).count(), 0)) + " s";
  };
  std::lock_guard lock(mutex_);
  const auto failed = std::find_if(ring_.begin(), ring_.end(), [](const Entry& e) { return e.failed; });
  if (failed != ring_.end()) return named(*failed) + ", failed after " + seconds(failed->ended - failed->issued);
  const auto open = std::find_if(ring_.begin(), ring_.end(), unfinished);
  if (open != ring_.end()) return named(*open) + ", unfinished for " + seconds(now - open->issued);
  if (ring_.empty()) return "";
  return "last: " + named(ring_.back()) + ", finished";
}

std::string FlightRecorder::to_json(int rank) const {
  nlohmann::json entries = nlohmann::json::array();
  for (const auto& e : this->entries()) {
    entries.push_back({{"id", e.id},
                       {"seq", e.seq},
                       {"step", e.step},
                       {"group", e.group},
                       {"op", e.op},
                       {"dtype", e.dtype},
                       {"elements", e.elements},
                       {"issued_unix_s", unix_seconds(e.issued)},
                       {"ended_unix_s", unfinished(e) ? nlohmann::json() : nlohmann::json(unix_seconds(e.ended))},
                       {"state", unfinished(e) ? "issued" : e.failed ? "failed" : "finished"}});
  }
  nlohmann::json groups = nlohmann::json::array();
  for (const auto& g : this->groups())
    groups.push_back({{"group", g.name}, {"rank", g.rank}, {"size", g.size}, {"issued", g.issued}});
  return nlohmann::json{{"rank", rank}, {"capacity", capacity_}, {"groups", std::move(groups)},
                        {"entries", std::move(entries)}}
      .dump(1);
}

void write_flight_record(const FlightRecorder& recorder, int rank, const std::string& path) {
  const std::filesystem::path target(path);
  std::error_code ec;
  if (target.has_parent_path()) std::filesystem::create_directories(target.parent_path(), ec);
  if (ec) throw std::runtime_error("cannot create " + target.parent_path().string() + ": " + ec.message());
  const auto tmp = path + ".tmp";
  checkpoint::write_file_durably(tmp, recorder.to_json(rank));
  std::filesystem::rename(tmp, target, ec);
  if (ec) throw std::runtime_error("cannot rename " + tmp + " to " + path + ": " + ec.message());
}

}  // namespace troupe::comm
