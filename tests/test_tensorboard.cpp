// TensorBoard event files: CRC32C and the record framing, and a run whose files the `tensorboard`
// package reads back with the values of metrics.jsonl.
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <iterator>

#include "metrics/tensorboard_writer.h"
#include "test_support.h"

using namespace troupe;

TEST_CASE("CRC32C and its masked form match known values", "[actors]") {
  CHECK(metrics::crc32c("") == 0u);
  CHECK(metrics::crc32c("123456789") == 0xE3069283u);
  CHECK(metrics::crc32c(std::string(32, '\0')) == 0x8A9136AAu);  // RFC 3720 B.4
  CHECK(metrics::crc32c(std::string(32, '\xff')) == 0x62A8AB43u);
  const uint32_t crc = 0xE3069283u;
  CHECK(metrics::masked_crc32c("123456789") == ((crc >> 15) | (crc << 17)) + 0xa282ead8u);
  CHECK(metrics::masked_crc32c("123456789") == 0xC78AB0E5u);
}

TEST_CASE("a TFRecord frames its data with length and masked CRCs", "[actors]") {
  const std::string data = "hello";
  const auto r = metrics::tfrecord(data);
  REQUIRE(r.size() == 8 + 4 + data.size() + 4);
  CHECK(r.substr(0, 8) == std::string("\x05\0\0\0\0\0\0\0", 8));
  auto le32 = [&](size_t at) {
    uint32_t v = 0;
    for (int i = 3; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(r[at + i]);
    return v;
  };
  CHECK(le32(8) == metrics::masked_crc32c(r.substr(0, 8)));
  CHECK(r.substr(12, data.size()) == data);
  CHECK(le32(12 + data.size()) == metrics::masked_crc32c(data));
}

TEST_CASE("the tensorboard package reads back the scalars of a run", "[actors]") {
  testing::TempDir dir;
  auto c = testing::small_job_config(dir);
  c.metrics.enable_tensorboard = true;
  testing::enable_validation(c, 3, 1);
  const auto outcome = testing::run_with_timeout(c);
  REQUIRE(outcome.exit_code == 0);
  const auto tb = std::filesystem::path(c.job.dump_folder) / "tb";
  std::vector<std::string> files;
  for (const auto& e : std::filesystem::directory_iterator(tb)) files.push_back(e.path().filename().string());
  REQUIRE(files.size() == 1);
  CHECK(files[0].rfind("events.out.tfevents.", 0) == 0);
  REQUIRE(testing::run_command("python3 " + testing::source_dir() + "/tests/oracle/tensorboard_check.py " + tb.string() +
                               " " + c.job.dump_folder + "/metrics.jsonl") == 0);
}
