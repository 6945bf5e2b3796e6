#include "parallel/pipeline_split.h"

#include <stdexcept>

namespace troupe::parallel::pp {

std::pair<int64_t, int64_t> StageSplit::units_of(int64_t stage) const {
  const int64_t last = stages() - 1;
  const int64_t begin = stage == 0 ? 0 : 1 + first_block.at(stage);
  const int64_t end = stage == last ? first_block.back() + 2 : 1 + first_block.at(stage + 1);
  return {begin, end};
}

StageSplit split_stages(int64_t n_blocks, int64_t pipeline_degree, int64_t default_stages, int64_t layers_per_stage,
                        const std::vector<std::string>& split_points) {
  StageSplit out;
  const std::string model = " (the model has " + std::to_string(n_blocks) + " transformer blocks)";
  if (!split_points.empty() && layers_per_stage > 0)
    throw std::invalid_argument(
        "parallelism: set pipeline_parallel_split_points or pipeline_parallel_layers_per_stage, not both");
  out.first_block.push_back(0);
  if (!split_points.empty()) {
    for (const auto& point : split_points) {
      const int64_t n = std::stoll(point.substr(point.find('.') + 1));
      if (n <= out.first_block.back() || n >= n_blocks)
        throw std::invalid_argument("parallelism.pipeline_parallel_split_points: '" + point +
                                    "' leaves a stage without blocks" + model);
      out.first_block.push_back(n);
    }
  } else if (layers_per_stage > 0) {
    for (int64_t b = layers_per_stage; b < n_blocks; b += layers_per_stage) out.first_block.push_back(b);
  } else {
    if (default_stages > n_blocks)
      throw std::invalid_argument("parallelism: " + std::to_string(default_stages) + " pipeline stages need as many blocks" +
                                  model);
    const int64_t base = n_blocks / default_stages, extra = n_blocks % default_stages;
    for (int64_t s = 0; s + 1 < default_stages; ++s) out.first_block.push_back(out.first_block.back() + base + (s < extra));
  }
  out.first_block.push_back(n_blocks);
  if (out.stages() % pipeline_degree != 0)
    throw std::invalid_argument("parallelism: " + std::to_string(out.stages()) + " pipeline stages do not spread evenly over " +
                                "pipeline_parallel_degree " + std::to_string(pipeline_degree) + " ranks" + model);
  return out;
}

}  // namespace troupe::parallel::pp
