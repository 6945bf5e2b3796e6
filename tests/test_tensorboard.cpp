// TensorBoard event files: CRC32C and the record framing, and a run whose files the `tensorboard`
// package reads back with the values of metrics.jsonl.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <iterator>

#include "checkpoint/checkpoint_folder.h"
#include "checkpoint/file_io.h"
#include "metrics/tensorboard_writer.h"
#include "runtime/exit_codes.h"
#include "runtime/remove_tree.h"
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

TEST_CASE("a resumed run, and a new run in a used folder, leave one record per step in metrics.jsonl and TensorBoard",
          "[actors]") {
  testing::TempDir dir;
  auto c = testing::small_job_config(dir);
  c.metrics.enable_tensorboard = true;
  c.checkpoint.enable = true;
  c.checkpoint.interval = 3;
  c.checkpoint.last_save_model_only = false;
  REQUIRE(testing::run_with_timeout(c).exit_code == 0);
  // As if killed before step 6's save: the restart resumes at step 4 and runs 4..6 again.
  runtime::remove_tree(checkpoint::checkpoint_folder(c) + "/step-6");  // not remove_all: see runtime/remove_tree.h
  const auto resumed = testing::run_with_timeout(c);
  REQUIRE(resumed.exit_code == 0);
  REQUIRE(resumed.steps.front().step == 4);
  auto steps_logged = [&] {
    std::vector<int64_t> steps;
    std::ifstream in(c.job.dump_folder + "/metrics.jsonl");
    for (std::string line; std::getline(in, line);) steps.push_back(nlohmann::json::parse(line)["step"].get<int64_t>());
    return steps;
  };
  CHECK(steps_logged() == std::vector<int64_t>{1, 2, 3, 4, 5, 6});
  const auto tb = std::filesystem::path(c.job.dump_folder) / "tb";
  CHECK(std::distance(std::filesystem::directory_iterator(tb), std::filesystem::directory_iterator()) == 2);
  const auto check = "python3 " + testing::source_dir() + "/tests/oracle/tensorboard_check.py " + tb.string() + " " +
                     c.job.dump_folder + "/metrics.jsonl";
  CHECK(testing::run_command(check) == 0);  // each step once, with the resumed run's values
  // A new run into the used folder starts both afresh.
  auto fresh = c;
  fresh.checkpoint.enable = false;
  fresh.training.steps = 2;
  REQUIRE(testing::run_with_timeout(fresh).exit_code == 0);
  CHECK(steps_logged() == std::vector<int64_t>{1, 2});
  CHECK(testing::run_command(check) == 0);
}

TEST_CASE("metrics that cannot be written end the job with an error naming the path; nothing is lost", "[actors]") {
  testing::TempDir dir;
  auto c = testing::small_job_config(dir);
  // job.dump_folder is a file: refused before the first step, the file untouched.
  c.job.dump_folder = dir.write("not_a_folder", "precious\n");
  auto outcome = testing::run_with_timeout(c);
  CHECK(outcome.exit_code == runtime::exit_code::failed);
  CHECK_THAT(outcome.message, Catch::Contains("metrics_sink: cannot create job.dump_folder " + c.job.dump_folder));
  CHECK(checkpoint::read_file(c.job.dump_folder) == "precious\n");
  // A full disk (metrics.jsonl on /dev/full): the first record's write fails and ends the job.
  c.job.dump_folder = dir.file("full");
  std::filesystem::create_directories(c.job.dump_folder);
  std::filesystem::create_symlink("/dev/full", c.job.dump_folder + "/metrics.jsonl");
  outcome = testing::run_with_timeout(c);
  CHECK(outcome.exit_code == runtime::exit_code::failed);
  CHECK_THAT(outcome.message, Catch::Contains("metrics_sink: cannot write " + c.job.dump_folder + "/metrics.jsonl"));
}
