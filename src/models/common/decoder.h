// A decoder-only transformer as units (DESIGN §3): token embedding, the blocks, and the head
// (final norm + output projection + loss). Parameter names are torchtitan's
// ("tok_embeddings.weight", "layers.3.attention.wq.weight", "layers.3.attention.q_norm.weight",
// "norm.weight", "output.weight"); rotary embeddings use Meta's interleaved-pair layout, so
// Llama checkpoints map one to one onto torchtitan's (Hugging Face's halves are permuted on
// import and export, hf_decoder.h).
#pragma once
#include <torch/nn/module.h>

#include <functional>
#include <vector>

#include "models/common/decoder_args.h"
#include "models/model.h"
#include "models/rank_group.h"

namespace troupe::models {

// cos/sin of the rotary angles for positions [0, max_seq_len), each [max_seq_len, head_dim/2].
struct RotaryTables {
  at::Tensor cos;
  at::Tensor sin;
};
RotaryTables make_rotary_tables(const DecoderArgs& args, int64_t max_seq_len, const at::TensorOptions& options);

class DecoderModel : public Model {
 public:
  DecoderModel(const DecoderArgs& args, const at::TensorOptions& options, int64_t max_seq_len,
               const std::function<bool(size_t unit)>& materialize = nullptr);

  const DecoderArgs& args() const { return args_; }
  const std::vector<UnitPtr>& units() const override { return units_; }
  at::Tensor logits(const at::Tensor& tokens) override;
  void set_compute_dtype(at::ScalarType dtype) override;
  void recompute_elementwise(bool on) override;
  // torchtitan's: truncated normal projections, depth-scaled where they write into the
  // residual stream, unit-normal embedding, norms at one.
  void init_weights(uint64_t seed) override;
  std::vector<std::pair<size_t, size_t>> borrowed_units() const override;
  // bias += delta - mean(delta), delta = load_balance_coeff * sign(mean load - load), per block
  // (DeepSeek V3's update, centred as torchtitan's).
  void balance_experts(const AuxValues& step) override;
  bool balances_experts() const override { return args_.num_experts > 0 && args_.load_balance_coeff > 0; }
  void apply_tensor_parallel(RankGroupPtr group, TensorParallelStyle style) override;
  void apply_context_parallel(const ContextParallel& cp) override;
  void apply_expert_parallel(RankGroupPtr group) override;

 private:
  DecoderArgs args_;
  std::vector<UnitPtr> units_;
  RankGroupPtr tp_;  // with tensor parallelism
  std::unique_ptr<ContextParallel> cp_;  // with context parallelism; the attentions point at it
  RankGroupPtr ep_;  // with expert parallelism; the MoE blocks point at it
};

// Why the decoder described by `args` cannot be split over `tp` tensor-parallel ranks (a message
// naming parallelism.tensor_parallel_degree and the dimension), or empty.
std::string tensor_parallel_problem(const DecoderArgs& args, int64_t tp);
// Why its routed experts cannot be split over `ep` expert-parallel ranks, or empty.
std::string expert_parallel_problem(const DecoderArgs& args, int64_t ep);

}  // namespace troupe::models
