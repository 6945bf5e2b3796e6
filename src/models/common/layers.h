// The modules the decoder's blocks are made of, shared by the dense feed-forward and the mixture
// of experts: a projection, an RMSNorm, a SwiGLU feed-forward. Each hands its model's weight
// services to the ops of its parameters (kernels/weight_services.h).
#pragma once
#include <torch/nn/module.h>

#include "kernels/ops.h"
#include "models/rank_group.h"

namespace troupe::models {

class Projection : public torch::nn::Module {
 public:
  Projection(int64_t in, int64_t out, const at::TensorOptions& o, const kernels::WeightServices* services)
      : weight(register_parameter("weight", at::empty({out, in}, o))), services(services) {}
  // Mixed precision: the fp32 master weight is cast to the activations' dtype; its gradient
  // arrives in fp32 (kernels::linear).
  at::Tensor forward(const at::Tensor& x, const kernels::InputRecipe& recipe = {}) const {
    return kernels::linear(x, weight, recipe, services);
  }
  at::Tensor weight;
  const kernels::WeightServices* services;
};

class RMSNorm : public torch::nn::Module {
 public:
  RMSNorm(int64_t dim, double eps, const at::TensorOptions& o, const kernels::WeightServices* services)
      : weight(register_parameter("weight", at::ones({dim}, o))), services(services), eps_(eps) {}
  at::Tensor forward(const at::Tensor& x) const { return kernels::rms_norm(x, weight, eps_, services); }
  double eps() const { return eps_; }
  at::Tensor weight;
  const kernels::WeightServices* services;

 private:
  double eps_;
};

class FeedForward : public torch::nn::Module {
 public:
  FeedForward(int64_t dim, int64_t hidden, const at::TensorOptions& o, const kernels::WeightServices* s) : services(s) {
    w1 = register_module("w1", std::make_shared<Projection>(dim, hidden, o, s));
    w2 = register_module("w2", std::make_shared<Projection>(hidden, dim, o, s));
    w3 = register_module("w3", std::make_shared<Projection>(dim, hidden, o, s));
  }
  // `recipe` given: the projections keep neither x nor SwiGLU's output but recompute them.
  // Under tensor parallelism x is this rank's part of the sequence: the whole sequence is
  // gathered for w1 and w3 (this rank's hidden columns), and w2's partial sums are added up
  // over the ranks as each takes its part of the sequence back (the gathered x is kept).
  at::Tensor forward(const at::Tensor& x, const kernels::InputRecipe& recipe = {}) const {
    auto gate_up = project_whole_sequence(x, {w1->weight, w3->weight}, tp, async_tp, recipe, services);
    const auto w2_recipe = recipe.op == kernels::InputRecipe::Op::none
                               ? kernels::InputRecipe{}
                               : kernels::InputRecipe::swiglu(gate_up[0], gate_up[1]);
    return project_to_parts(kernels::swiglu(gate_up[0], gate_up[1]), w2->weight, tp, async_tp, w2_recipe, services);
  }
  std::shared_ptr<Projection> w1, w2, w3;
  const kernels::WeightServices* services;
  // Tensor parallelism (Model::apply_tensor_parallel): w1 and w3 hold this rank's rows (hidden
  // units), w2 its columns; `async_tp`: as collective matmuls (models/rank_group.h).
  RankGroup* tp = nullptr;
  bool async_tp = false;
};

}  // namespace troupe::models
