#include "metrics/tensorboard_writer.h"

#include <unistd.h>

#include <array>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <stdexcept>
#include <type_traits>

#include "runtime/node_placement.h"

namespace troupe::metrics {

namespace {

std::array<uint32_t, 256> make_crc_table() {
  std::array<uint32_t, 256> table{};
  for (uint32_t byte = 0; byte < 256; ++byte) {
    uint32_t crc = byte;
    for (int bit = 0; bit < 8; ++bit) crc = (crc & 1) ? (crc >> 1) ^ 0x82F63B78u : crc >> 1;
    table[byte] = crc;
  }
  return table;
}

// Protobuf wire format, only what Event needs.
void put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}

void put_tag(std::string& out, int field, int wire_type) { put_varint(out, (static_cast<uint64_t>(field) << 3) | wire_type); }

template <typename T>
void put_little_endian(std::string& out, T value) {
  static_assert(std::is_trivially_copyable_v<T>);
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof value);
  for (size_t i = 0; i < sizeof value; ++i) out.push_back(static_cast<char>((bits >> (8 * i)) & 0xff));
}

void put_bytes(std::string& out, int field, std::string_view bytes) {
  put_tag(out, field, 2);
  put_varint(out, bytes.size());
  out.append(bytes);
}

// Event fields 1 (wall_time, double) and 2 (step, int64).
std::string event_header(double wall_time, int64_t step) {
  std::string e;
  put_tag(e, 1, 1);
  put_little_endian(e, wall_time);
  put_tag(e, 2, 0);
  put_varint(e, static_cast<uint64_t>(step));
  return e;
}

double unix_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace

uint32_t crc32c(std::string_view data) {
  static const auto table = make_crc_table();
  uint32_t crc = 0xffffffffu;
  for (unsigned char c : data) crc = table[(crc ^ c) & 0xff] ^ (crc >> 8);
  return ~crc;
}

uint32_t masked_crc32c(std::string_view data) {
  const uint32_t crc = crc32c(data);
  return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
}

std::string tfrecord(std::string_view data) {
  std::string out;
  out.reserve(data.size() + 16);
  put_little_endian(out, static_cast<uint64_t>(data.size()));
  put_little_endian(out, masked_crc32c(out));
  out.append(data);
  put_little_endian(out, masked_crc32c(data));
  return out;
}

std::string scalar_event(double wall_time, int64_t step, const std::vector<std::pair<std::string, float>>& scalars) {
  std::string summary;
  for (const auto& [tag, value] : scalars) {
    std::string v;  // Summary.Value: tag (1), simple_value (2, float)
    put_bytes(v, 1, tag);
    put_tag(v, 2, 5);
    put_little_endian(v, value);
    put_bytes(summary, 1, v);
  }
  auto e = event_header(wall_time, step);
  put_bytes(e, 5, summary);
  return e;
}

std::string file_version_event(double wall_time) {
  auto e = event_header(wall_time, 0);
  put_bytes(e, 3, "brain.Event:2");
  return e;
}

std::string session_start_event(double wall_time, int64_t step) {
  std::string log;  // SessionLog: status (1) = START (1)
  put_tag(log, 1, 0);
  put_varint(log, 1);
  auto e = event_header(wall_time, step);
  put_bytes(e, 7, log);  // Event.session_log (6 is the deprecated log_message)
  return e;
}

TensorBoardWriter::TensorBoardWriter(const std::string& folder, const std::string& suffix) {
  std::error_code ec;
  std::filesystem::create_directories(folder, ec);
  if (ec) throw std::runtime_error("cannot create " + folder + ": " + ec.message());
  const auto host = runtime::host_name();
  const double now = unix_seconds();
  path_ = (std::filesystem::path(folder) /
           ("events.out.tfevents." + std::to_string(static_cast<int64_t>(now)) + "." + host + "." +
            std::to_string(getpid()) + suffix))
              .string();
  out_.open(path_, std::ios::binary | std::ios::trunc);
  if (!out_) throw std::runtime_error("cannot open " + path_ + " for writing");
  write_record(file_version_event(now));
  out_.flush();
  if (!out_) throw std::runtime_error("cannot write " + path_);
}

void TensorBoardWriter::add_scalars(int64_t step, const std::vector<std::pair<std::string, float>>& scalars) {
  write_record(scalar_event(unix_seconds(), step, scalars));
  out_.flush();
  if (!out_) throw std::runtime_error("cannot write " + path_);
}

void TensorBoardWriter::start_at(int64_t step) {
  write_record(session_start_event(unix_seconds(), step));
  out_.flush();
  if (!out_) throw std::runtime_error("cannot write " + path_);
}

void TensorBoardWriter::write_record(const std::string& event) {
  const auto record = tfrecord(event);
  out_.write(record.data(), static_cast<std::streamsize>(record.size()));
  if (!out_) throw std::runtime_error("cannot write " + path_);
}

}  // namespace troupe::metrics
