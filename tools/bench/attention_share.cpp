// Context parallelism's load balance, measured on one GPU: the attention (forward and backward)
// of the whole sequence, then each cp rank's share of it as the rank computes it under the
// allgather method (its two chunks of queries over the gathered keys: flash attention over the
// mask's segments, and under causal masking cuDNN's dense blocks), with the model's heads in bf16. A rank's time against 1/cp of the whole's
// says how evenly causal load balancing splits the work.
#include <ATen/CPUGeneratorImpl.h>
#include <c10/cuda/CUDAFunctions.h>
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <functional>
#include <map>

#include "bench/benchmarks.h"
#include "kernels/attention.h"
#include "kernels/dense_block_attention.h"
#include "kernels/ops.h"
#include "parallel/context_parallel.h"
#include "runtime/device_info.h"
#include "train/job_model.h"

namespace troupe::bench {

Timing time_work(const std::function<void()>& work, int64_t rounds) {
  Timing t{1e30, 0};
  const int gpu = c10::cuda::current_device();
  for (int64_t i = 0; i < rounds + 1; ++i) {
    torch::cuda::synchronize();
    runtime::reset_gpu_memory_peaks(gpu);
    const auto start = std::chrono::steady_clock::now();
    work();
    torch::cuda::synchronize();
    const double ms = 1e3 * std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (i > 0) t.ms = std::min(t.ms, ms);
    t.peak_gib = static_cast<double>(runtime::gpu_memory_peaks(gpu).active_bytes) / (1 << 30);
  }
  return t;
}

namespace {

// A forward + backward pass of `attention` over fresh leaves of `inputs`, timed as time_work.
Timing time_attention(const std::function<at::Tensor(std::vector<at::Tensor>&)>& attention,
                      const std::vector<at::Tensor>& inputs, int64_t rounds) {
  return time_work(
      [&] {
        std::vector<at::Tensor> leaves;
        for (const auto& x : inputs) leaves.push_back(x.detach().requires_grad_(true));
        auto out = attention(leaves);
        out.backward(torch::ones_like(out));
      },
      rounds);
}

// One table of the ranks' times against 1/cp of the whole's, and its summary line.
class RankTable {
 public:
  RankTable(const char* method, int64_t cp, double whole_ms) : method_(method), share_ms_(whole_ms / cp) {
    std::printf("| cp rank (%s) | ms | x (whole / %lld) | peak GiB |\n|---|---|---|---|\n", method,
                static_cast<long long>(cp));
  }
  void add(int64_t rank, const Timing& t) {
    slowest_ = std::max(slowest_, t.ms);
    fastest_ = std::min(fastest_, t.ms);
    std::printf("| %lld | %.2f | %.3f | %.2f |\n", static_cast<long long>(rank), t.ms, t.ms / share_ms_, t.peak_gib);
  }
  void summary() const {
    std::printf("\n%s: slowest rank / (whole / cp) = %.3f; slowest / fastest = %.3f\n\n", method_, slowest_ / share_ms_,
                slowest_ / fastest_);
  }

 private:
  const char* method_;
  double share_ms_, slowest_ = 0, fastest_ = 1e30;
};

int64_t dimension(const models::Dimensions& dims, const std::string& key, int64_t otherwise) {
  for (const auto& [k, v] : dims)
    if (k == key) return std::stoll(v);
  return otherwise;
}

}  // namespace

at::Tensor random_documents(int64_t rows, int64_t seq, int64_t n) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(1234);
  auto docs = torch::empty({rows, seq}, torch::kLong);
  auto* d = docs.data_ptr<int64_t>();
  for (int64_t b = 0; b < rows; ++b) {
    int64_t doc = 0, left = 0;
    for (int64_t t = 0; t < seq; ++t) {
      if (left == 0) {
        left = torch::randint(1, 2 * n, {1}, gen).item<int64_t>();
        ++doc;
      }
      d[b * seq + t] = doc;
      --left;
    }
  }
  return docs;
}


int attention_share(const config::JobConfig& cfg, int64_t cp, int64_t document_tokens, int64_t rounds) {
  if (!torch::cuda::is_available()) throw std::runtime_error("attention-share measures on a GPU; none is available");
  const auto arch = train::job_model(cfg, 128256);
  const auto dims = arch->dimensions();
  const int64_t H = dimension(dims, "n_heads", 32), Hkv = dimension(dims, "n_kv_heads", H),
                D = dimension(dims, "head_dim", dimension(dims, "dim", 4096) / H);
  const int64_t B = cfg.training.local_batch_size, S = cfg.training.seq_len;
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  kernels::prefer_cudnn_attention(torch::kCUDA);
  const auto opts = torch::TensorOptions().dtype(torch::kBFloat16).device(torch::kCUDA);
  const auto q = torch::randn({B, S, H, D}, opts), k = torch::randn({B, S, Hkv, D}, opts),
             v = torch::randn({B, S, Hkv, D}, opts);
  const auto docs = document_tokens > 0 ? random_documents(B, S, document_tokens) : at::Tensor();
  const auto whole_positions = torch::arange(S, torch::kLong);

  // The whole sequence, as one rank computes it: causal SDPA (cuDNN), or flash attention over
  // the documents.
  Timing whole;
  if (docs.defined()) {
    const auto segments =
        kernels::attention_segments(kernels::AttentionMask::of(whole_positions, whole_positions, docs), B)
            .to(torch::Device(torch::kCUDA));
    whole = time_attention([&](auto& in) { return kernels::segment_attention(in[0], in[1], in[2], segments, scale); },
                           {q, k, v}, rounds);
  } else {
    whole = time_attention(
        [&](auto& in) {
          return at::scaled_dot_product_attention(in[0].transpose(1, 2), in[1].transpose(1, 2), in[2].transpose(1, 2),
                                                  std::nullopt, 0.0, true, scale, /*enable_gqa=*/Hkv != H);
        },
        {q, k, v}, rounds);
  }
  std::printf("attention of %lld x %lld tokens, %lld q heads over %lld kv heads of %lld, %s, bf16 on %s\n",
              static_cast<long long>(B), static_cast<long long>(S), static_cast<long long>(H),
              static_cast<long long>(Hkv), static_cast<long long>(D),
              docs.defined() ? ("block_causal (documents of " + std::to_string(document_tokens) + " tokens on average)").c_str()
                             : "causal",
              runtime::cuda_device_name(c10::cuda::current_device()).c_str());
  std::printf("whole sequence: %.2f ms forward + backward, %.2f GiB peak\n", whole.ms, whole.peak_gib);
  if (!docs.defined()) {
    // The same work on the ranks' kernel (flash attention, one segment per row): what a rank's
    // share is to be compared with to see the load balance alone.
    const auto segments = kernels::attention_segments({whole_positions, whole_positions}, B).to(torch::Device(torch::kCUDA));
    const auto flash = time_attention(
        [&](auto& in) { return kernels::segment_attention(in[0], in[1], in[2], segments, scale); }, {q, k, v}, rounds);
    std::printf("whole sequence on flash attention (the ranks' kernel): %.2f ms; the ranks' x below are against "
                "the cuDNN figure, x %.3f for flash's\n",
                flash.ms, whole.ms / flash.ms);
  }
  std::printf("\n");
  const auto layout = parallel::context_parallel_layout(S, cp);
  const auto cuda = torch::Device(torch::kCUDA);
  const auto k_all = k.index_select(1, layout.rank_major.to(cuda)), v_all = v.index_select(1, layout.rank_major.to(cuda));
  auto segments_over = [&](int64_t rank, const at::Tensor& keys) {
    return kernels::attention_segments(kernels::AttentionMask::of(layout.positions[rank], keys, docs), B).to(cuda);
  };
  RankTable allgather("allgather", cp, whole.ms);
  for (int64_t r = 0; r < cp; ++r) {
    const auto segments = segments_over(r, layout.rank_major);
    const auto q_local = q.index_select(1, layout.positions[r].to(cuda));
    allgather.add(r, time_attention([&](auto& in) { return kernels::segment_attention(in[0], in[1], in[2], segments, scale); },
                                    {q_local, k_all, v_all}, rounds));
  }
  allgather.summary();
  if (!docs.defined()) {
    // Causal masking: the same shares as cuDNN's dense blocks over the keys in position order
    // (what the trainer runs under allgather), on the whole sequence's kernel.
    RankTable dense("allgather, cuDNN dense blocks", cp, whole.ms);
    for (int64_t r = 0; r < cp; ++r) {
      const auto runs = kernels::query_runs(layout.positions[r], S);
      const auto q_local = q.index_select(1, layout.positions[r].to(cuda));
      dense.add(r, time_attention([&](auto& in) { return kernels::dense_block_attention(in[0], in[1], in[2], runs, scale); },
                                  {q_local, k, v}, rounds));
    }
    dense.summary();
  }
  // The ring: each rank's queries over every rank's block of keys (here the blocks are in this
  // GPU's memory: the transfers are not measured), merged by log-sum-exp, then the backward's
  // parts with the merged output.
  RankTable ring("ring, compute only", cp, whole.ms);
  const auto dout = torch::ones({B, S / cp, H, D}, opts);
  const auto part = S / cp;
  for (int64_t r = 0; r < cp; ++r) {
    std::vector<kernels::AttentionSegments> blocks;
    for (int64_t owner = 0; owner < cp; ++owner) blocks.push_back(segments_over(r, layout.positions[owner]));
    const auto q_local = q.index_select(1, layout.positions[r].to(cuda));
    ring.add(r, time_work(
                     [&] {
                       kernels::AttentionPart merged;
                       for (int64_t owner = 0; owner < cp; ++owner)
                         kernels::merge_attention(
                             merged, kernels::segment_attention_part(q_local, k_all.narrow(1, owner * part, part),
                                                                     v_all.narrow(1, owner * part, part), blocks[owner],
                                                                     scale));
                       for (int64_t owner = 0; owner < cp; ++owner)
                         kernels::segment_attention_part_backward(dout, q_local, k_all.narrow(1, owner * part, part),
                                                                  v_all.narrow(1, owner * part, part), merged.out,
                                                                  merged.lse, blocks[owner], scale);
                     },
                     rounds));
  }
  ring.summary();
  return 0;
}

}  // namespace troupe::bench
