// Data parallelism over a plain model, applied per unit (DESIGN §4): FSDP (ZeRO-3) across
// dp_shard, replication (DDP) across dp_replicate, both (HSDP). Each parameter is split on dim 0
// into dp_shard chunks (torch.chunk sizes) and a rank keeps its chunk as an fp32 master; a unit's
// chunks live in one flat buffer, so a unit is one all-gather before its forward (grouped: one
// per parameter, each straight into the parameter's place; the next unit's is issued while this
// one computes) and one reduce-scatter after its backward (grouped likewise, from the parameters'
// places in a gradient buffer of the gathered layout, where the projections write their weight
// gradients directly: kernels/gradient_sink.h). The gathered compute copies are freed after the forward (per the reshard policy) and gathered
// again before the backward: the module's parameters share the gathered buffer's storage, which
// is emptied and refilled in place, so the autograd graph keeps pointing at them.
#pragma once
#include <ATen/core/Tensor.h>

#include <memory>
#include <set>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "comm/communicator.h"
#include "kernels/gradient_sink.h"
#include "models/unit.h"
#include "parallel/unit_executor.h"

namespace troupe::kernels {
class Float8Linears;
class WeightCopies;
}

namespace troupe::parallel {

enum class Reshard { default_policy, always, never };
Reshard parse_reshard(const std::string& value);  // default | always | never

struct DataParallelOptions {
  comm::CommunicatorPtr shard;      // dp_shard group; null when its degree is 1
  comm::CommunicatorPtr replicate;  // dp_replicate group; null when its degree is 1
  at::ScalarType compute_dtype = at::kFloat;  // the gathered copies (mixed_precision_param)
  at::ScalarType reduce_dtype = at::kFloat;   // gradients on the wire (mixed_precision_reduce)
  Reshard reshard = Reshard::default_policy;
  // (i, j): unit i's forward also reads unit j's parameters (an output head tied to the
  // embedding), so unit j is gathered whenever unit i runs.
  std::vector<std::pair<size_t, size_t>> borrows;
  // Expert parallelism: the routed experts' parameters (these, already cut to this rank's
  // experts) are sharded over `shard` (efsdp; null when its degree is 1) instead, each unit's in
  // a buffer of their own; replicated over dp_replicate as the rest. Their gradients sum the
  // tokens of the ep ranks (the all-to-all brought them), which hold ep / tp data-parallel
  // ranks' batches (a tp group's ranks hold parts of the same sequences), so they are divided by
  // that as well: the average over every data-parallel rank, as the other parameters'
  // (torchtitan's gradient_divide_factor).
  struct Experts {
    std::set<const void*> parameters;  // TensorImpl addresses
    comm::CommunicatorPtr shard;
    int64_t divide = 1;  // ep / tp
  };
  Experts experts;
  // FP8 all-gather (torchtitan's enable_fsdp_float8_all_gather; tensorwise): the FP8 projections'
  // weights travel as e4m3 bytes, half of bf16's, quantized from the fp32 master shards with one
  // scale per weight from the amax over every shard (a max all-reduce), and their projections
  // compute with the gathered bytes (Float8Linears::provide); no bf16 copy of them is gathered.
  // `float8_precompute` (precompute_float8_dynamic_scale_for_fsdp): every weight's scale comes
  // from one all-reduce after the optimizer step (precompute_float8_scales), not one per gather.
  kernels::Float8Linears* float8 = nullptr;
  bool float8_precompute = false;
};

// One rank's piece of a parameter: its dim-0 chunk (rows [first_row, first_row + rows) of
// `shape`), a view of the fp32 master shard.
struct ParameterShard {
  std::string name;             // as in the plain model ("layers.0.attention.wq.weight")
  std::vector<int64_t> shape;   // the whole parameter's
  int64_t index = 0, parts = 1;  // chunk `index` of `parts`
  size_t unit = 0;              // which of the units passed to ShardedUnits holds it
  at::Tensor master;            // [rows, ...] fp32, rows possibly 0; the optimizer's parameter
};

class ShardedUnits : public parallel::UnitHooks {
 public:
  // Takes over the units' parameters (every rank must pass identical initial values): each is
  // replaced by a view of its unit's gathered buffer, and the master chunks are cut from them.
  // `names`: the whole model's named parameters, for the shards' names.
  ShardedUnits(const std::vector<models::UnitPtr>& units, const std::vector<std::pair<std::string, at::Tensor>>& names,
               DataParallelOptions options);
  ~ShardedUnits() override;

  // The master chunks with their names, unit by unit; their grads are set by finish_gradients().
  const std::vector<ParameterShard>& shards() const { return shards_; }

  void before_forward(size_t unit) override;
  void after_forward(size_t unit) override;
  void before_backward(size_t unit) override;
  void after_backward(size_t unit) override;
  // A lookup table's gradient (the embedding's, not tied to the output) as rows: every rank's
  // tokens and their output gradients are gathered, and each rank adds up those of its own rows.
  // Taken when the gathered rows are no more bytes than the table's gradient in the reduce dtype
  // (what the dense gradient's reduction moves); the table is then not gathered for the backward.
  bool backward_rows(size_t unit, const at::Tensor& tokens, const at::Tensor& grad_output) override;

  // The sinks the model's ops write these units' weight gradients to: the model's
  // WeightServices must hand them over (parallelize does), or the gradients come through
  // autograd and are copied in.
  kernels::GradientSinks& gradient_sinks() { return gradient_sinks_; }

  // Where the compute dtype is not fp32: each unit keeps the cast of its master shard that the
  // gathers send, as the masters' placed copies in `copies`. The optimizer's kernel rewrites them
  // in its pass, so a gather casts only when a master was written some other way (the first
  // step, a checkpoint load), not twice a step.
  void keep_send_copies(kernels::WeightCopies& copies);

  // Before a step's first micro-batch: the masters' gradients start again from zero.
  void zero_gradients();
  // Starts gathering unit i for the next forward (the optimizer calls it as soon as unit i's
  // shards are updated, so that the first units' gathers overlap the update of the rest).
  void prefetch(size_t unit) { gather_unit(unit); }
  // After a micro-batch's backward: waits for every reduction and adds the averaged gradient
  // chunks into the masters' grads.
  void finish_gradients();
  // Frees every gathered unit (after evaluation, before a checkpoint restore).
  void release_all();
  // FP8 all-gather: every FP8 weight's scale from its masters as they are now, in one max
  // all-reduce over the shard group (after the optimizer step; the gathers until the next one use
  // them). Without it, or after release_all, each gather computes its unit's.
  void precompute_float8_scales();
  // Averages a scalar (the loss) over every data-parallel rank, in place.
  void average_over_data_parallel(at::Tensor& scalar);

 private:
  struct Unit;
  // A model unit's parameters are one Unit of the shard group, and one more of the expert
  // shard group where it has routed experts; these take the model's unit numbers.
  template <class F>
  void each_part(size_t unit, F&& f);
  void gather_unit(size_t unit);
  void wait_unit(size_t unit);
  void free_unit(size_t unit);
  Unit& first_part(size_t unit) { return *units_.at(parts_.at(unit).front()); }
  // A Unit of `params` (of model unit `module`) sharded over `shard`, its gradients' average
  // divided by `divide` as well.
  void add_unit(const std::vector<at::Tensor>& params, comm::CommunicatorPtr shard, int64_t divide, size_t module,
                const std::unordered_map<const void*, std::string>& name_of);
  void gather(Unit& u);
  at::Tensor send_buffer(Unit& u);
  // The grouped collectives' operands: every parameter's place in a buffer of the gathered layout
  // and its piece of a buffer of the shard's layout.
  std::pair<std::vector<at::Tensor>, std::vector<at::Tensor>> per_parameter(const Unit& u, const at::Tensor& gathered,
                                                                            const at::Tensor& shard) const;
  // FP8 all-gather: the unit's FP8 weights' amax over their master chunks (fp32 [n]), and their
  // chunks quantized with `scales` into the unit's byte send buffer.
  at::Tensor float8_amax(const Unit& u) const;
  void quantize_float8(Unit& u, const at::Tensor& scales);
  void open_gradients(Unit& u);
  void copy_gradients(const std::vector<std::pair<at::Tensor, at::Tensor>>& copies) const;
  at::Tensor& master_gradient(Unit& u);  // allocated at the unit's first reduction of a step
  void wait_gathered(Unit& u);
  void free_gathered(Unit& u);
  void gather_borrowed(size_t unit);
  void finish_unit(Unit& u);
  void reduce_gradients(Unit& u);  // after its backward
  at::Tensor table_gradient(Unit& u);
  std::vector<std::unique_ptr<Unit>> units_;
  std::vector<std::vector<size_t>> parts_;  // each model unit's Units
  std::vector<ParameterShard> shards_;
  DataParallelOptions options_;
  kernels::WeightCopies* copies_ = nullptr;
  bool sinks_ = true;  // the weights' gradients go to sinks (kernels/gradient_sink.h)
  kernels::GradientSinks gradient_sinks_;
  // The unit whose reduction was issued last: finished when the next one is issued, so that its
  // whole gradient is freed then, not when the step ends.
  Unit* reducing_ = nullptr;
};

}  // namespace troupe::parallel
