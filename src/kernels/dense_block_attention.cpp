#include "kernels/dense_block_attention.h"

#include <torch/torch.h>

#include <stdexcept>

namespace troupe::kernels {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// [B, S, heads, d] rows [first, first + n) as cuDNN takes them: [B, heads, n, d] (a view).
at::Tensor heads_first(const at::Tensor& t, int64_t first, int64_t n) { return t.narrow(1, first, n).transpose(1, 2); }

// One block: its output [B, H, n, Dv] in q's dtype, its log-sum-exp [B, H, n] in fp32, and
// what the backward hands back to cuDNN.
struct Block {
  at::Tensor out, lse, seed, offset;
  bool lse_has_unit_dim = false;
};

Block block_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, bool causal, double scale) {
  auto r = at::_scaled_dot_product_cudnn_attention(q, k, v, std::nullopt, /*compute_log_sumexp=*/true, 0.0, causal,
                                                   /*return_debug_mask=*/false, scale);
  Block b{std::get<0>(r), std::get<1>(r), std::get<6>(r), std::get<7>(r)};
  b.lse_has_unit_dim = b.lse.dim() == 4;
  if (b.lse_has_unit_dim) b.lse = b.lse.squeeze(-1);
  TORCH_CHECK(b.lse.dim() == 3 && b.lse.size(2) == q.size(2), "cuDNN attention's log-sum-exp is ", b.lse.sizes(),
              ", not [B, heads, queries]");
  return b;
}

// The run's blocks: over the keys before it (none for a run at position 0), then its own square.
struct RunBlocks {
  int64_t k_first[2], k_rows[2];
  bool causal[2];
  int count;
};
RunBlocks blocks_of(const QueryRun& r) {
  if (r.position == 0) return {{0, 0}, {r.rows, 0}, {true, false}, 1};
  return {{0, r.position}, {r.position, r.rows}, {false, true}, 2};
}

std::vector<int64_t> flatten(const std::vector<QueryRun>& runs) {
  std::vector<int64_t> flat;
  for (const auto& r : runs) flat.insert(flat.end(), {r.first, r.rows, r.position});
  return flat;
}

struct DenseBlockAttention : torch::autograd::Function<DenseBlockAttention> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            std::vector<int64_t> runs, double scale) {
    const auto B = q.size(0), Sq = q.size(1), H = q.size(2), Dv = v.size(3);
    auto out = at::empty({B, Sq, H, Dv}, q.options());
    auto lse = at::empty({B, H, Sq}, q.options().dtype(at::kFloat));
    c10::List<at::Tensor> philox;
    bool unit_dim = false;
    for (size_t i = 0; i < runs.size(); i += 3) {
      const QueryRun run{runs[i], runs[i + 1], runs[i + 2]};
      const auto blocks = blocks_of(run);
      const auto qr = heads_first(q, run.first, run.rows);
      std::vector<Block> done;
      for (int b = 0; b < blocks.count; ++b) {
        done.push_back(block_forward(qr, heads_first(k, blocks.k_first[b], blocks.k_rows[b]),
                                     heads_first(v, blocks.k_first[b], blocks.k_rows[b]), blocks.causal[b], scale));
        philox.push_back(done.back().seed);
        philox.push_back(done.back().offset);
        unit_dim = done.back().lse_has_unit_dim;
      }
      auto out_run = heads_first(out, run.first, run.rows);
      auto lse_run = lse.narrow(2, run.first, run.rows);
      if (done.size() == 1) {
        out_run.copy_(done[0].out);
        lse_run.copy_(done[0].lse);
        continue;
      }
      // Every query sees at least its own key, so neither log-sum-exp is -inf at once.
      const auto merged = at::logaddexp(done[0].lse, done[1].lse);
      const auto share = [&](const Block& b) { return at::exp(b.lse - merged).unsqueeze(-1); };
      out_run.copy_(done[0].out.to(at::kFloat) * share(done[0]) + done[1].out.to(at::kFloat) * share(done[1]));
      lse_run.copy_(merged);
    }
    ctx->save_for_backward({q, k, v, out, lse});
    ctx->saved_data["runs"] = runs;
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["philox"] = philox;
    ctx->saved_data["unit_dim"] = unit_dim;
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();
    const auto &q = s[0], &k = s[1], &v = s[2], &out = s[3], &lse = s[4];
    const auto runs = ctx->saved_data["runs"].toIntVector();
    const double scale = ctx->saved_data["scale"].toDouble();
    const auto philox = ctx->saved_data["philox"].toTensorList();
    const bool unit_dim = ctx->saved_data["unit_dim"].toBool();
    // cuDNN wants the output's gradient in the output's layout.
    const auto dout = grads[0].contiguous();
    const auto f32 = q.options().dtype(at::kFloat);
    auto dq = at::zeros(q.sizes(), f32), dk = at::zeros(k.sizes(), f32), dv = at::zeros(v.sizes(), f32);
    size_t p = 0;
    for (size_t i = 0; i < runs.size(); i += 3) {
      const QueryRun run{runs[i], runs[i + 1], runs[i + 2]};
      const auto blocks = blocks_of(run);
      const auto qr = heads_first(q, run.first, run.rows), dr = heads_first(dout, run.first, run.rows),
                 outr = heads_first(out, run.first, run.rows);
      auto lser = lse.narrow(2, run.first, run.rows).contiguous();
      if (unit_dim) lser = lser.unsqueeze(-1);
      for (int b = 0; b < blocks.count; ++b) {
        const auto kf = blocks.k_first[b], kn = blocks.k_rows[b];
        auto r = at::_scaled_dot_product_cudnn_attention_backward(
            dr, qr, heads_first(k, kf, kn), heads_first(v, kf, kn), outr, lser, philox[p], philox[p + 1], at::Tensor(),
            at::Tensor(), at::Tensor(), run.rows, kn, 0.0, blocks.causal[b], scale);
        p += 2;
        heads_first(dq, run.first, run.rows).add_(std::get<0>(r));
        heads_first(dk, kf, kn).add_(std::get<1>(r));
        heads_first(dv, kf, kn).add_(std::get<2>(r));
      }
    }
    return {dq.to(q.scalar_type()), dk.to(k.scalar_type()), dv.to(v.scalar_type()), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

std::vector<QueryRun> query_runs(const at::Tensor& q_positions, int64_t k_count) {
  const auto host = q_positions.to(at::kCPU, at::kLong).contiguous();
  const auto* pos = host.data_ptr<int64_t>();
  std::vector<QueryRun> runs;
  for (int64_t i = 0; i < host.numel(); ++i) {
    if (pos[i] < 0 || pos[i] >= k_count) return {};
    if (!runs.empty() && pos[i] == runs.back().position + runs.back().rows && i == runs.back().first + runs.back().rows)
      ++runs.back().rows;
    else
      runs.push_back({i, 1, pos[i]});
  }
  return runs;
}

bool dense_block_attention_fits(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  const auto d = q.size(3);
  return q.is_cuda() && (q.scalar_type() == at::kBFloat16 || q.scalar_type() == at::kHalf) && k.size(3) == d &&
         v.size(3) == d && d % 8 == 0 && d <= 128 && q.size(2) % k.size(2) == 0 &&
         !at::globalContext().deterministicAlgorithms();
}

at::Tensor dense_block_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                 const std::vector<QueryRun>& runs, double scale) {
  int64_t covered = 0;
  for (const auto& r : runs) {
    if (r.first != covered || r.position + r.rows > k.size(1))
      throw std::invalid_argument("dense_block_attention: the runs must cover q's rows in order, within the keys");
    covered += r.rows;
  }
  if (covered != q.size(1)) throw std::invalid_argument("dense_block_attention: the runs do not cover q's rows");
  return DenseBlockAttention::apply(q, k, v, flatten(runs), scale);
}

}  // namespace troupe::kernels
