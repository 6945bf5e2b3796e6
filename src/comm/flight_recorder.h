// The last collectives a rank issued, over all of its communicators ([comm] trace_buf_size, as
// torchtitan's flight recorder): for each, its group, its number within that group, its operation
// and size, when it was issued and whether it has finished. Every rank of a group issues that
// group's operations in one order (DESIGN §4), so the numbers line up across ranks: in a hang,
// the rank whose last number is lowest is the one the others wait for. The engines record; a
// failed job writes each rank's record to [comm] save_traces_folder, and a stage's oldest
// unfinished operation shows in the console and in the job's failure message.
#pragma once
#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

namespace troupe::comm {

class FlightRecorder {
 public:
  struct Entry {
    uint64_t id = 0;   // in this recorder, 1, 2, ...
    uint64_t seq = 0;  // in its group, 1, 2, ...
    int64_t step = 0;  // the training step the rank was in (0: before the first)
    std::string group, op, dtype;
    int64_t elements = 0;  // of the operation's tensors, outputs and inputs together
    std::chrono::system_clock::time_point issued, ended;  // ended: epoch while unfinished
    bool failed = false;
  };

  // A group the rank belongs to, and how many operations it has issued there.
  struct Group {
    std::string name;
    int rank = -1, size = 0;  // in the group (-1, 0: never joined, only used)
    uint64_t issued = 0;
  };

  explicit FlightRecorder(size_t capacity) : capacity_(capacity) {}
  // The rank's communicator over `group` is connected, as its rank `rank` of `size`: a group
  // joined and never used still shows (a peer's collectives waiting for this rank's first).
  void joined(const std::string& group, int rank, int size);
  // Returns the entry's id, for ended(). Thread-safe, as is all of it: a NCCL watchdog ends
  // entries while the rank's thread issues more.
  uint64_t issued(const std::string& group, const std::string& op, int64_t elements, const std::string& dtype);
  // The step the rank's later operations belong to (Trainer::step sets it).
  void set_step(int64_t step) { step_.store(step, std::memory_order_relaxed); }
  // Marks the entry finished (or failed); an id the ring has dropped is ignored.
  void ended(uint64_t id, bool failed = false);
  // The rank's exposed communication: how long its work stood still waiting for its collectives.
  // Gloo: the host time its threads spent blocked in waits.
  void add_wait(std::chrono::nanoseconds blocked) { waited_ns_.fetch_add(blocked.count(), std::memory_order_relaxed); }
  // NCCL: the host does not block; the waiting CUDA stream stalls, and for how long is known only
  // once the device has passed the wait. `seconds` returns that stall then, and a negative number
  // before.
  void add_device_wait(std::function<double()> seconds);
  // Both kinds, the device's as far as it has run: after the rank's stream is synchronized, all.
  double waited_seconds() const;
  // The host's alone: what a span of host time (the optimizer's) lost to waits.
  double host_waited_seconds() const { return 1e-9 * static_cast<double>(waited_ns_.load(std::memory_order_relaxed)); }
  // Oldest first.
  std::vector<Entry> entries() const;
  std::vector<Group> groups() const;
  // One line: the first failed operation ("all_gather #12 of dp_shard in step 3, failed after
  // 100 s"), else the oldest unfinished ("..., unfinished for 41 s"), else the last ("last:
  // all_gather #12 of dp_shard in step 3, finished"); empty before the first.
  std::string summary(std::chrono::system_clock::time_point now) const;
  // The record as JSON: {"rank": R, "capacity": N, "groups": [{"group", "rank", "size",
  // "issued"}, ...], "entries": [{"id", "seq", "step", "group", "op", "dtype", "elements",
  // "issued_unix_s", "ended_unix_s" (null while unfinished), "state" (issued | finished |
  // failed)}, ...]}.
  std::string to_json(int rank) const;

 private:
  size_t capacity_;
  mutable std::mutex mutex_;
  std::deque<Entry> ring_;
  uint64_t next_id_ = 1;
  std::atomic<int64_t> step_{0};
  std::atomic<int64_t> waited_ns_{0};
  mutable std::vector<std::function<double()>> device_waits_;  // not yet passed; under mutex_
  mutable double device_waited_ = 0;                            // of those passed; under mutex_
  std::vector<Group> groups_;  // few: a vector beats a map
  Group& group(const std::string& name);  // under mutex_
};

// Writes the record to `path` atomically (a temporary file, then rename); std::runtime_error
// names the path on a failure.
void write_flight_record(const FlightRecorder& recorder, int rank, const std::string& path);

}  // namespace troupe::comm
