#include "kernels/ops.h"

#include <torch/torch.h>

#ifdef TROUPE_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>

#include "kernels/cross_entropy.h"
#include "kernels/rmsnorm.h"
#include "kernels/rotary.h"
#include "kernels/swiglu.h"
#endif

namespace troupe::kernels {

namespace {

at::Tensor rms_norm_reference(const at::Tensor& x, const at::Tensor& weight, double eps) {
  const auto compute = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto xf = x.to(compute);
  auto normed = xf * at::rsqrt(xf.pow(2).mean(-1, true) + eps);
  return normed.to(x.scalar_type()) * weight.to(x.scalar_type());
}

at::Tensor rotary_reference(const at::Tensor& x, const at::Tensor& cos_table, const at::Tensor& sin_table) {
  const auto B = x.size(0), S = x.size(1), H = x.size(2), D = x.size(3);
  const auto compute = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto pairs = x.to(compute).reshape({B, S, H, D / 2, 2});
  auto x0 = pairs.select(-1, 0), x1 = pairs.select(-1, 1);
  auto cos = cos_table.narrow(0, 0, S).view({1, S, 1, D / 2});
  auto sin = sin_table.narrow(0, 0, S).view({1, S, 1, D / 2});
  return at::stack({x0 * cos - x1 * sin, x0 * sin + x1 * cos}, -1).flatten(3).to(x.scalar_type());
}

at::Tensor linear_cross_entropy_reference(const at::Tensor& hidden, const at::Tensor& weight,
                                          const at::Tensor& targets) {
  auto logits = at::linear(hidden, weight.to(hidden.scalar_type()));
  auto lf = logits.scalar_type() == at::kDouble ? logits : logits.to(at::kFloat);
  return at::cross_entropy_loss(lf.flatten(0, -2), targets.flatten());
}

#ifdef TROUPE_WITH_CUDA

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

Dtype kernel_dtype(const at::Tensor& t) {
  if (t.scalar_type() == at::kFloat) return Dtype::f32;
  if (t.scalar_type() == at::kBFloat16) return Dtype::bf16;
  throw std::invalid_argument(std::string("CUDA kernels take float32 or bfloat16, got ") +
                              std::string(c10::toString(t.scalar_type())));
}

bool use_kernels(const at::Tensor& x) {
  return x.is_cuda() && (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16);
}

cudaStream_t stream() { return at::cuda::getCurrentCUDAStream().stream(); }

struct RmsNormFn : torch::autograd::Function<RmsNormFn> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight, double eps) {
    auto xc = x.contiguous();
    auto w = weight.to(x.scalar_type()).contiguous();
    const auto dim = x.size(-1), rows = x.numel() / dim;
    auto out = at::empty_like(xc);
    auto rstd = at::empty({rows}, x.options().dtype(at::kFloat));
    rmsnorm_forward(kernel_dtype(xc), out.data_ptr(), rstd.data_ptr<float>(), xc.data_ptr(), w.data_ptr(), rows, dim,
                    static_cast<float>(eps), stream());
    ctx->save_for_backward({xc, w, rstd});
    ctx->saved_data["weight_dtype"] = static_cast<int64_t>(weight.scalar_type());
    return out;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const auto &x = saved[0], &w = saved[1], &rstd = saved[2];
    auto dout = grads[0].contiguous();
    const auto dim = x.size(-1), rows = x.numel() / dim;
    auto dx = at::empty_like(x);
    auto dweight = at::zeros({dim}, x.options().dtype(at::kFloat));
    rmsnorm_backward(kernel_dtype(x), dx.data_ptr(), dweight.data_ptr<float>(), dout.data_ptr(), x.data_ptr(),
                     w.data_ptr(), rstd.data_ptr<float>(), rows, dim, stream());
    const auto weight_dtype = static_cast<at::ScalarType>(ctx->saved_data["weight_dtype"].toInt());
    return {dx, dweight.to(weight_dtype), at::Tensor()};
  }
};

struct RotaryFn : torch::autograd::Function<RotaryFn> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
    auto xc = x.contiguous();
    auto out = at::empty_like(xc);
    rotary_forward(kernel_dtype(xc), out.data_ptr(), xc.data_ptr(), cos.data_ptr<float>(), sin.data_ptr<float>(),
                   x.size(0), x.size(1), x.size(2), x.size(3), stream());
    ctx->save_for_backward({cos, sin});
    return out;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    auto dout = grads[0].contiguous();
    auto dx = at::empty_like(dout);
    rotary_backward(kernel_dtype(dout), dx.data_ptr(), dout.data_ptr(), saved[0].data_ptr<float>(),
                    saved[1].data_ptr<float>(), dout.size(0), dout.size(1), dout.size(2), dout.size(3), stream());
    return {dx, at::Tensor(), at::Tensor()};
  }
};

struct SwigluFn : torch::autograd::Function<SwigluFn> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& gate, const at::Tensor& up) {
    auto g = gate.contiguous(), u = up.contiguous();
    auto out = at::empty_like(g);
    swiglu_forward(kernel_dtype(g), out.data_ptr(), g.data_ptr(), u.data_ptr(), g.numel(), stream());
    ctx->save_for_backward({g, u});
    return out;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    auto dout = grads[0].contiguous();
    auto dgate = at::empty_like(saved[0]), dup = at::empty_like(saved[1]);
    swiglu_backward(kernel_dtype(dout), dgate.data_ptr(), dup.data_ptr(), dout.data_ptr(), saved[0].data_ptr(),
                    saved[1].data_ptr(), dout.numel(), stream());
    return {dgate, dup};
  }
};

// The loss is the graph's last op, so its gradient is known up to the incoming scalar: the
// forward computes d(mean loss)/d(hidden) and /d(weight) chunk by chunk while each chunk of
// logits exists, and the backward only scales them.
struct LinearCrossEntropyFn : torch::autograd::Function<LinearCrossEntropyFn> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& hidden, const at::Tensor& weight,
                            const at::Tensor& targets, int64_t chunk_rows) {
    const auto dim = hidden.size(-1);
    auto h = hidden.reshape({-1, dim}).contiguous();
    auto t = targets.reshape({-1}).contiguous();
    const auto rows = h.size(0), vocab = weight.size(0);
    auto w = weight.to(h.scalar_type()).contiguous();
    auto losses = at::empty({rows}, h.options().dtype(at::kFloat));
    auto dh = at::empty_like(h);
    auto dw = at::zeros({vocab, dim}, weight.options().dtype(at::kFloat));
    const float grad_scale = 1.f / static_cast<float>(std::max<int64_t>(1, (t >= 0).sum().item<int64_t>()));
    for (int64_t r0 = 0; r0 < rows; r0 += chunk_rows) {
      const auto n = std::min(chunk_rows, rows - r0);
      auto hc = h.narrow(0, r0, n);
      auto logits = at::mm(hc, w.t());  // [n, vocab] in the compute dtype; becomes its own gradient
      cross_entropy_forward_backward(kernel_dtype(logits), logits.data_ptr(), losses.narrow(0, r0, n).data_ptr<float>(),
                                     t.narrow(0, r0, n).data_ptr<int64_t>(), n, vocab, grad_scale, stream());
      dh.narrow(0, r0, n).copy_(at::mm(logits, w));
      at::addmm_out(dw, dw, logits.t(), hc, at::kFloat);  // fp32 accumulation across chunks
    }
    ctx->save_for_backward({dh.view(hidden.sizes()), dw});
    ctx->saved_data["weight_dtype"] = static_cast<int64_t>(weight.scalar_type());
    return losses.sum() * grad_scale;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const auto& g = grads[0];
    const auto weight_dtype = static_cast<at::ScalarType>(ctx->saved_data["weight_dtype"].toInt());
    return {saved[0] * g.to(saved[0].scalar_type()), (saved[1] * g).to(weight_dtype), at::Tensor(), at::Tensor()};
  }
};

#endif  // TROUPE_WITH_CUDA

}  // namespace

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
#ifdef TROUPE_WITH_CUDA
  if (use_kernels(x)) return RmsNormFn::apply(x, weight, eps);
#endif
  return rms_norm_reference(x, weight, eps);
}

at::Tensor rotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
#ifdef TROUPE_WITH_CUDA
  TORCH_CHECK(cos.device() == x.device() && sin.device() == x.device(), "rotary: tables on ", cos.device(),
              ", activations on ", x.device());
  if (use_kernels(x) && cos.scalar_type() == at::kFloat) {
    const auto S = x.size(1);
    return RotaryFn::apply(x, cos.narrow(0, 0, S).contiguous(), sin.narrow(0, 0, S).contiguous());
  }
#endif
  return rotary_reference(x, cos, sin);
}

at::Tensor swiglu(const at::Tensor& gate, const at::Tensor& up) {
#ifdef TROUPE_WITH_CUDA
  if (use_kernels(gate)) return SwigluFn::apply(gate, up);
#endif
  return at::silu(gate) * up;
}

at::Tensor linear_cross_entropy(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& targets,
                                int64_t chunk_rows) {
#ifdef TROUPE_WITH_CUDA
  if (use_kernels(hidden)) return LinearCrossEntropyFn::apply(hidden, weight, targets, chunk_rows);
#endif
  return linear_cross_entropy_reference(hidden, weight, targets);
}

}  // namespace troupe::kernels
