// Where a model's pipeline stages begin and end (torchtitan's pipeline_split): stage s runs
// transformer blocks [first_block[s], first_block[s + 1]), stage 0 also the token embedding and
// the last stage also the head (final norm, output projection, loss).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace troupe::parallel::pp {

struct StageSplit {
  std::vector<int64_t> first_block;  // stages + 1 entries, from 0 to the number of blocks

  int64_t stages() const { return static_cast<int64_t>(first_block.size()) - 1; }
  // The units of stage s, [begin, end) over (embedding, blocks..., head).
  std::pair<int64_t, int64_t> units_of(int64_t stage) const;
};

// From the [parallelism] keys: split_points ("layers.N": a stage begins at block N), else
// layers_per_stage (> 0), else an even split into `default_stages` (earlier stages take the
// remainder). Throws std::invalid_argument naming the key when the split is impossible: an
// empty stage, a point beyond the model, or stages that do not spread evenly over the ranks.
StageSplit split_stages(int64_t n_blocks, int64_t pipeline_degree, int64_t default_stages, int64_t layers_per_stage,
                        const std::vector<std::string>& split_points);

}  // namespace troupe::parallel::pp
