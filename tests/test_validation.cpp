// Validation through the actors: when it runs, what it logs, and that its loss is the model's.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <cmath>
#include <fstream>
#include <map>

#include "data/batch_source.h"
#include "data/tokenizer.h"
#include "test_support.h"
#include "train/job_model.h"
#include "train/trainer.h"

using namespace troupe;

namespace {

// step -> {validation_loss, validation_perplexity} from the run's metrics.jsonl.
std::map<int64_t, std::pair<double, double>> validation_records(const config::JobConfig& c) {
  std::map<int64_t, std::pair<double, double>> out;
  std::ifstream in(c.job.dump_folder + "/metrics.jsonl");
  std::string line;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line);
    if (j.contains("validation_loss"))
      out[j.at("step").get<int64_t>()] = {j.at("validation_loss").get<double>(), j.at("validation_perplexity").get<double>()};
  }
  return out;
}

// The mean loss of the validation set's first `steps` batches under `trainer`'s model.
double plain_validation(const config::JobConfig& c, train::Trainer& trainer) {
  data::BatchSource val(data::DatasetSpec::validation(c), {});
  double sum = 0;
  for (int64_t i = 0; i < c.validation.steps; ++i) sum += trainer.evaluate(val.next());
  return sum / static_cast<double>(c.validation.steps);
}

}  // namespace

TEST_CASE("validation runs every freq steps and after the last, on the model of that step", "[actors]") {
  testing::TempDir dir;
  auto c = testing::small_job_config(dir);
  c.training.steps = 7;
  testing::enable_validation(c, 3, 2);
  const auto outcome = testing::run_with_timeout(c);
  REQUIRE(outcome.exit_code == 0);
  REQUIRE(outcome.steps.size() == 7);
  const auto records = validation_records(c);
  REQUIRE(records.size() == 3);
  REQUIRE((records.count(3) && records.count(6) && records.count(7)));
  for (const auto& [step, r] : records) CHECK(r.second == std::exp(r.first));
  CHECK(records.at(7).first < records.at(3).first);  // the run learns

  // A plain loop over the same batches: the validation loss after step 3 is the same bit for bit.
  data::BatchSource src(c);
  train::Trainer trainer(c, train::job_model(c));
  for (int64_t step = 1; step <= 3; ++step) {
    std::vector<std::shared_ptr<const data::Batch>> micro;
    for (int i = 0; i < 2; ++i) micro.push_back(std::make_shared<const data::Batch>(src.next()));
    trainer.step(step, micro);
  }
  CHECK(plain_validation(c, trainer) == records.at(3).first);
  // Evaluating changes nothing: the same batches again give the same loss.
  CHECK(plain_validation(c, trainer) == records.at(3).first);

  // A second identical run validates identically.
  testing::TempDir dir2;
  auto c2 = c;
  c2.job.dump_folder = dir2.file("dump");
  REQUIRE(testing::run_with_timeout(c2).exit_code == 0);
  CHECK(validation_records(c2) == records);
}
