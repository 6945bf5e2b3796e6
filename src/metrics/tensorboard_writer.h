// TensorBoard event files (events.out.tfevents.<unix time>.<host>) without TensorFlow: the
// TFRecord framing with masked CRC32C and a hand-encoded `Event` protobuf of scalar summaries.
#pragma once
#include <cstdint>
#include <fstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace troupe::metrics {

// CRC32C (Castagnoli, reflected polynomial 0x82F63B78) of `data`.
uint32_t crc32c(std::string_view data);
// The TFRecord form: ((crc >> 15) | (crc << 17)) + 0xa282ead8.
uint32_t masked_crc32c(std::string_view data);

// One TFRecord: uint64 length (LE), masked CRC32C of those 8 bytes, data, masked CRC32C of data.
std::string tfrecord(std::string_view data);

// A serialized tensorflow Event with wall_time, step and a Summary of scalar (tag, value) pairs.
std::string scalar_event(double wall_time, int64_t step, const std::vector<std::pair<std::string, float>>& scalars);
// The file's first Event: wall_time and file_version "brain.Event:2".
std::string file_version_event(double wall_time);
// An Event with session_log START at `step`: TensorBoard drops the scalars of earlier files at
// this step and after (a resumed run's re-run steps).
std::string session_start_event(double wall_time, int64_t step);

class TensorBoardWriter {
 public:
  // Creates `folder` and opens events.out.tfevents.<unix time>.<host><suffix> in it, writing the
  // file_version record. Throws std::runtime_error naming the path on any failure.
  TensorBoardWriter(const std::string& folder, const std::string& suffix = "");
  // Writes one Event of scalars for `step` and flushes. Throws on a failed write.
  void add_scalars(int64_t step, const std::vector<std::pair<std::string, float>>& scalars);
  // Marks a (re)start at `step`: what earlier runs logged from this step on is purged.
  void start_at(int64_t step);
  const std::string& path() const { return path_; }

 private:
  void write_record(const std::string& event);
  std::string path_;
  std::ofstream out_;
};

}  // namespace troupe::metrics
