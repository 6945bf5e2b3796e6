// The one place where parallelisms are applied to a plain model, always in this order
// (DESIGN §4, torchtitan's parallelize):
//   1. pipeline stages: which units this rank runs (plan_pipeline, before the model is built,
//      so that another stage's units are built on the meta device);
//   2. the model's own sharding plan: tensor, context and expert parallelism over their mesh
//      dimensions;
//   3. activation checkpointing: which units recompute, and the blocks' element-wise policy;
//   4. data parallelism: FSDP / DDP / HSDP over the rank's units;
//   5. the unit executor, and the pipeline executor over it.
// Every trained tensor comes out with its placement.
#pragma once
#include <ATen/core/Tensor.h>

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "comm/communicator.h"
#include "config/job_config.h"
#include "models/architecture.h"
#include "models/model.h"
#include "parallel/device_mesh.h"
#include "parallel/fsdp.h"
#include "parallel/pipeline_executor.h"
#include "parallel/pipeline_schedule.h"
#include "parallel/pipeline_split.h"
#include "parallel/placement.h"
#include "parallel/rank_context.h"
#include "parallel/tensor_parallel.h"
#include "parallel/unit_executor.h"

namespace troupe::parallel {

// The pipeline stages of the model and which of them this rank runs; the schedule is checked
// here, before any rank computes.
struct PipelinePlan {
  pp::StageSplit split;
  pp::Schedule schedule;
  std::vector<int64_t> units;  // this rank's, in stage order
};

// Step 1: none without pipeline parallelism; std::invalid_argument naming the key for a split or
// schedule that cannot be.
std::optional<PipelinePlan> plan_pipeline(const config::JobConfig& cfg, const ParallelDims& dims, int rank,
                                          const models::Architecture& arch);

// This rank's communicator over the mesh dimensions `over` (their product's ranks; null where
// that is 1, unless the rank shards alone over dp_shard): NCCL on GPUs, Gloo on CPUs; replicas of
// this rank under RankContext::replicas.
comm::CommunicatorPtr connect(const RankContext& rank, const DeviceMesh& mesh, const std::vector<MeshDim>& over,
                              bool cuda);

// A tensor the optimizer trains, with the plain model's name and where it lives.
struct PlacedTensor {
  std::string name;
  at::Tensor tensor;
  Placement placement;
  size_t unit = 0;  // under data parallelism: which of ParallelModel::units it belongs to
};

struct ParallelModel {
  std::vector<int64_t> unit_ids;  // this rank's units, in the model's order or the stages'
  std::vector<models::UnitPtr> units;
  std::vector<PlacedTensor> trained;  // what the optimizer updates: whole parameters or shards
  std::vector<at::Tensor> parameters;  // the units' own (gathered views under FSDP)
  // State the units keep beside their parameters and nothing trains (a MoE block's expert
  // bias), by the model's names: whole on every rank of the units' stage, checkpointed.
  std::vector<std::pair<std::string, at::Tensor>> buffers;
  // What the gradient norm's squares are summed across: the groups of the mesh dimensions the
  // trained tensors are split over (from their placements), then the pipeline's stages.
  std::vector<comm::CommunicatorPtr> norm_groups;
  // Tensor parallelism's group (null without it), and the trained tensors several tp ranks hold
  // alike, whose gradients are partial per rank until summed over those ranks.
  comm::CommunicatorPtr tp;
  std::vector<TpReplicated> tp_replicated;
  comm::CommunicatorPtr cp;  // context parallelism's group; null without it
  comm::CommunicatorPtr ep;  // expert parallelism's group; null without it
  std::unique_ptr<ShardedUnits> sharded;  // null without data parallelism
  std::unique_ptr<UnitExecutor> executor;
  comm::CommunicatorPtr stages;  // the pipeline group; null without a pipeline
  std::unique_ptr<pp::PipelineExecutor> pipeline;
};

// Steps 2-5 over `model` (built with plan's units materialised). `compute_dtype`: the
// activations' and gathered weights' dtype; `reduce_dtype`: gradients on the wire.
ParallelModel parallelize(models::Model& model, const models::Architecture& arch, const std::optional<PipelinePlan>& plan,
                          const config::JobConfig& cfg,
                          const RankContext& rank, const ParallelDims& dims, const std::string& device,
                          at::ScalarType compute_dtype, at::ScalarType reduce_dtype);

}  // namespace troupe::parallel
