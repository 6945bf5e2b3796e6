// Expert parallelism's share of the work, measured on one GPU (issue: "one EP rank's share with
// the replica communicator"): the routed experts of one MoE block in bf16, forward and backward,
//   - whole: every expert over the tokens of all ep ranks (ep x local_batch_size x seq_len);
//   - one rank's grouped GEMMs: its num_experts / ep experts over the rows a balanced router
//     sends it (as many as its own tokens' copies);
//   - one rank's whole path: the dispatch (counts exchanged, copies permuted and sent), those
//     GEMMs, and the combine, with replicas standing in for the other ep ranks.
// A balanced router: token t's j-th copy goes to expert (t x top_k + j) mod num_experts.
#include <c10/cuda/CUDAFunctions.h>
#include <torch/torch.h>

#include <cstdio>

#include "bench/benchmarks.h"
#include "comm/replica_communicator.h"
#include "kernels/moe_ops.h"
#include "models/common/decoder_architecture.h"
#include "models/common/moe.h"
#include "parallel/rank_group.h"
#include "runtime/device_info.h"
#include "train/job_model.h"

namespace troupe::bench {

namespace {

// The permutation of `tokens` tokens' copies over `experts` experts, balanced.
kernels::Permutation balanced(int64_t tokens, int64_t top_k, int64_t experts, const torch::Device& device) {
  const auto choice = torch::arange(tokens * top_k, torch::TensorOptions().dtype(torch::kLong).device(device))
                          .remainder(experts)
                          .view({tokens, top_k});
  return kernels::permutation(choice, torch::bincount(choice.view({-1}), {}, experts));
}

// Forward and backward of the experts over `flat`'s copies.
Timing time_experts(const models::GroupedExperts& experts, const at::Tensor& flat, const kernels::Permutation& p,
                    int64_t rounds) {
  return time_work(
      [&] {
        auto x = flat.detach().requires_grad_(true);
        auto y = experts.forward(x, p, false);
        y.backward(torch::ones_like(y));
      },
      rounds);
}

}  // namespace

int expert_share(const config::JobConfig& cfg, int64_t ep, int64_t rounds) {
  if (!torch::cuda::is_available()) throw std::runtime_error("expert-share measures on a GPU; none is available");
  const auto arch = train::job_model(cfg);
  const auto* decoder = dynamic_cast<const models::DecoderArchitecture*>(arch.get());
  if (!decoder || decoder->args().num_experts == 0)
    throw std::invalid_argument("expert-share: model " + cfg.model.name + " " + cfg.model.flavor + " has no routed experts");
  if (const auto problem = arch->expert_parallel_problem(ep); !problem.empty()) throw std::invalid_argument(problem);
  auto a = decoder->args();
  const int64_t E = a.num_experts, k = a.top_k, L = E / ep, T = cfg.training.local_batch_size * cfg.training.seq_len;
  const auto cuda = torch::Device(torch::kCUDA);
  const auto bf16 = torch::TensorOptions().dtype(torch::kBFloat16).device(cuda);
  std::printf("routed experts of %s %s: %lld experts (top %lld) of %lld x %lld, ep %lld, %lld tokens per rank, "
              "bf16 on %s\n\n",
              cfg.model.name.c_str(), cfg.model.flavor.c_str(), static_cast<long long>(E), static_cast<long long>(k),
              static_cast<long long>(a.dim), static_cast<long long>(a.moe_inter_dim), static_cast<long long>(ep),
              static_cast<long long>(T), runtime::cuda_device_name(c10::cuda::current_device()).c_str());

  torch::manual_seed(0);
  auto init = [](models::GroupedExperts& g) {
    torch::NoGradGuard no_grad;
    for (auto* w : {&g.w1, &g.w2, &g.w3}) w->normal_(0, 0.02);
  };
  models::GroupedExperts whole_experts(a, bf16, nullptr);
  init(whole_experts);
  const auto whole = time_experts(whole_experts, torch::randn({ep * T, a.dim}, bf16), balanced(ep * T, k, E, cuda), rounds);

  auto local_args = a;
  local_args.num_experts = L;
  models::GroupedExperts rank_experts(local_args, bf16, nullptr);
  init(rank_experts);
  // What a balanced router sends one rank: its own tokens' worth of copies, for its L experts.
  const auto rank_gemms = time_experts(rank_experts, torch::randn({T * k, a.dim}, bf16), balanced(T * k, 1, L, cuda), rounds);

  auto group = parallel::make_rank_group(comm::make_replica_communicator("ep[replicas]", static_cast<int>(ep),
                                                                         c10::cuda::current_device()));
  const auto flat = torch::randn({T, a.dim}, bf16);
  const auto p = balanced(T, k, E, cuda);
  const auto path = time_work(
      [&] {
        auto x = flat.detach().requires_grad_(true);
        auto y = models::routed_over_ranks(x, p, rank_experts, false, *group, nullptr);
        y.backward(torch::ones_like(y));
      },
      rounds);

  // The shared experts beside the routed ones: after the exchange, or while the copies travel.
  Timing serial, overlapped, shared_alone;
  const bool has_shared = a.num_shared_experts > 0;
  if (has_shared) {
    models::FeedForward shared(a.dim, a.num_shared_experts * a.moe_inter_dim, bf16, nullptr);
    {
      torch::NoGradGuard no_grad;
      for (auto& w : shared.parameters()) w.normal_(0, 0.02);
    }
    auto run = [&](bool overlap) {
      auto x = flat.detach().requires_grad_(true);
      at::Tensor s;
      auto compute = [&] { s = shared.forward(x); };
      if (!overlap) compute();
      auto y = models::routed_over_ranks(x, p, rank_experts, false, *group, nullptr,
                                         overlap ? std::function<void()>(compute) : std::function<void()>());
      (y.sum() + s.sum()).backward();
    };
    serial = time_work([&] { run(false); }, rounds);
    overlapped = time_work([&] { run(true); }, rounds);
    shared_alone = time_work(
        [&] {
          auto x = flat.detach().requires_grad_(true);
          shared.forward(x).sum().backward();
        },
        rounds);
  }

  const double share = whole.ms / static_cast<double>(ep);
  std::printf("| what | ms | x (whole / ep) | peak GiB |\n|---|---|---|---|\n");
  std::printf("| whole: %lld experts over %lld tokens | %.2f | %.3f | %.2f |\n", static_cast<long long>(E),
              static_cast<long long>(ep * T), whole.ms, whole.ms / share, whole.peak_gib);
  std::printf("| one rank's grouped GEMMs: %lld experts over %lld rows | %.2f | %.3f | %.2f |\n",
              static_cast<long long>(L), static_cast<long long>(T * k), rank_gemms.ms, rank_gemms.ms / share,
              rank_gemms.peak_gib);
  std::printf("| one rank's path: dispatch, GEMMs, combine (replicas) | %.2f | %.3f | %.2f |\n", path.ms,
              path.ms / share, path.peak_gib);
  const double params = 3.0 * static_cast<double>(a.dim * a.moe_inter_dim);
  // fp32 master, its bf16 copy, two fp32 Adam moments, an fp32 gradient: 22 bytes a parameter.
  std::printf("\nrouted experts' training state per MoE block (22 bytes a parameter): %.2f GiB whole, %.2f GiB per ep "
              "rank\n",
              22.0 * params * static_cast<double>(E) / (1 << 30), 22.0 * params * static_cast<double>(L) / (1 << 30));
  std::printf("the rank's grouped GEMMs / (whole / ep) = %.3f; the dispatch and combine add %.2f ms (%.1f%% of the "
              "rank's path) on the compute stream\n",
              rank_gemms.ms / share, path.ms - rank_gemms.ms, 100.0 * (path.ms - rank_gemms.ms) / path.ms);
  if (has_shared)
    std::printf("with the %lld shared experts (%.2f ms alone): %.2f ms computed after the dispatch, %.2f ms while it "
                "travels (replicas: the copies are device-to-device on a side stream, not a link)\n",
                static_cast<long long>(a.num_shared_experts), shared_alone.ms, serial.ms, overlapped.ms);
  return 0;
}

}  // namespace troupe::bench
