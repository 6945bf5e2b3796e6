// What the ops of a model's parameters may use besides the tensors: the kept compute-dtype
// copies of the fp32 masters, the sinks their weight gradients go to instead of autograd's, and
// which projections compute in FP8.
// The module that owns a parameter hands its model's services to every op of it; the trainer
// fills them (the optimizer's copies, FSDP's sinks). An op handed none casts and differentiates
// plainly: there is no registry or thread-local scope for a new op to miss.
#pragma once

namespace troupe::kernels {

class WeightCopies;
class GradientSinks;
class Float8Linears;

struct WeightServices {
  WeightCopies* copies = nullptr;  // null: cast the master in every forward
  GradientSinks* sinks = nullptr;  // null: every weight gradient through autograd
  Float8Linears* float8 = nullptr;  // the weights whose projections compute in FP8 (kernels/float8_linear.h)
};

}  // namespace troupe::kernels
