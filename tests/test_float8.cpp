// Float8 training: the byte conversions and the quantize reference against fp64 formulas, the
// recipes' rules, the config and the converter ([kernels], [config], everywhere); the CUDA
// kernels against the reference, the FP8 GEMMs against fp64, the FP8 projection against bf16 and
// training against bf16 ([gpu]).
#include <catch2/catch.hpp>
#include <torch/torch.h>

#include <cmath>
#include <fstream>
#include <limits>

#ifdef TROUPE_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#endif

#include "comm/rendezvous.h"
#include "data/batch_source.h"
#include "kernels/float8.h"
#include "kernels/float8_linear.h"
#include "kernels/gradient_sink.h"
#include "models/model.h"
#include "train/float8_converter.h"
#include "train/job_model.h"
#include "train/trainer.h"
#include "test_support.h"

using namespace troupe;
using kernels::Fp8Format;
using kernels::ScaleGranularity;

namespace {

// The value of each byte from the formats' definition (sign, exponent bias 7 or 15, 3 or 2
// mantissa bits, subnormals), in fp64: NaN for e4m3's 0x7F/0xFF and e5m2's top exponent.
double decode(uint8_t q, Fp8Format f) {
  const int mbits = f == Fp8Format::e4m3 ? 3 : 2, bias = f == Fp8Format::e4m3 ? 7 : 15;
  const int e = (q & 0x7F) >> mbits, m = q & ((1 << mbits) - 1);
  const double sign = q & 0x80 ? -1 : 1;
  if (f == Fp8Format::e4m3 && (q & 0x7F) == 0x7F) return NAN;
  if (f == Fp8Format::e5m2 && e == 31) return NAN;
  if (e == 0) return sign * m * std::pow(2.0, 1 - bias - mbits);
  return sign * (1 + m / double(1 << mbits)) * std::pow(2.0, e - bias);
}

// The byte nearest to v by search over every finite byte (ties to the even mantissa), saturating.
uint8_t nearest(double v, Fp8Format f) {
  int best = -1;
  double best_d = std::numeric_limits<double>::infinity();
  for (int q = 0; q < 256; ++q) {
    const double d = decode(static_cast<uint8_t>(q), f);
    if (std::isnan(d) || (d == 0 && std::signbit(v) != bool(q & 0x80))) continue;
    if ((d < 0) != (v < 0) && d != 0) continue;
    const double dist = std::abs(d - v);
    if (dist < best_d || (dist == best_d && (q & 1) == 0)) best = q, best_d = dist;
  }
  return static_cast<uint8_t>(best);
}

// The scale of a run by the formula: amax / max in fp64, then rounded to fp32, or the power of
// two at or above it.
float formula_scale(double amax, Fp8Format f, bool pow2) {
  const double s = std::max(amax, double(kernels::kFp8AmaxFloor)) / (f == Fp8Format::e4m3 ? 448.0 : 57344.0);
  if (!pow2) return static_cast<float>(s);
  return static_cast<float>(std::pow(2.0, std::ceil(std::log2(static_cast<float>(s)))));
}

struct Quantized {
  at::Tensor q, scale, q_t, scale_t;  // bytes and scales as flat CPU tensors
};

kernels::Fp8QuantizeArgs args_for(const at::Tensor& x, ScaleGranularity g, Fp8Format f, bool pow2, Quantized& out,
                                  int64_t ld_t) {
  const auto rows = x.size(0), cols = x.size(1);
  out.q = torch::zeros({rows, cols}, torch::TensorOptions().dtype(torch::kUInt8).device(x.device()));
  out.q_t = torch::full({cols, ld_t}, 0x55, torch::TensorOptions().dtype(torch::kUInt8).device(x.device()));
  out.scale = torch::full({kernels::fp8_scale_count(g, rows, cols)}, -1.0f, x.options().dtype(torch::kFloat));
  out.scale_t = torch::full({kernels::fp8_scale_count(g, cols, ld_t)}, -1.0f, x.options().dtype(torch::kFloat));
  kernels::Fp8QuantizeArgs a{x.scalar_type() == torch::kFloat ? kernels::Dtype::f32 : kernels::Dtype::bf16,
                             x.data_ptr(), rows, cols, g, f, pow2};
  a.out = out.q.data_ptr<uint8_t>();
  a.out_scale = out.scale.data_ptr<float>();
  a.out_t = out.q_t.data_ptr<uint8_t>();
  a.ld_t = ld_t;
  a.out_t_scale = out.scale_t.data_ptr<float>();
  return a;
}

Quantized quantize_ref(const at::Tensor& x, ScaleGranularity g, Fp8Format f, bool pow2, int64_t ld_t) {
  auto xf = x.to(torch::kFloat).contiguous();
  Quantized out;
  kernels::fp8_quantize_ref(args_for(xf, g, f, pow2, out, ld_t));
  return out;
}

const char* name_of(ScaleGranularity g) {
  switch (g) {
    case ScaleGranularity::tensor: return "tensor";
    case ScaleGranularity::row: return "row";
    case ScaleGranularity::tile: return "tile";
    default: return "block";
  }
}

// The run of (r, c) that out's scale covers, as [r0, r1) x [c0, c1).
std::array<int64_t, 4> run_of(ScaleGranularity g, int64_t rows, int64_t cols, int64_t r, int64_t c) {
  switch (g) {
    case ScaleGranularity::tensor: return {0, rows, 0, cols};
    case ScaleGranularity::row: return {r, r + 1, 0, cols};
    case ScaleGranularity::tile: return {r, r + 1, c / 128 * 128, std::min(cols, c / 128 * 128 + 128)};
    default: return {r / 128 * 128, std::min(rows, r / 128 * 128 + 128), c / 128 * 128, std::min(cols, c / 128 * 128 + 128)};
  }
}

}  // namespace

TEST_CASE("FP8 bytes: decoding follows the formats' definition, encoding picks the nearest value", "[kernels]") {
  for (auto f : {Fp8Format::e4m3, Fp8Format::e5m2}) {
    INFO((f == Fp8Format::e4m3 ? "e4m3" : "e5m2"));
    for (int q = 0; q < 256; ++q) {
      const double d = decode(static_cast<uint8_t>(q), f);
      const float got = kernels::fp8_to_float(static_cast<uint8_t>(q), f);
      if (std::isnan(d)) continue;
      if (f == Fp8Format::e5m2 && (q & 0x7F) >= 0x7C) continue;  // inf / NaN
      INFO("byte " << q);
      CHECK(got == static_cast<float>(d));
      if (q != 0x80) CHECK(kernels::fp8_from_float(got, f) == q);  // every finite value round-trips
    }
    CHECK(kernels::fp8_to_float(kernels::fp8_from_float(1e9f, f), f) == kernels::fp8_max(f));  // saturates
    CHECK(kernels::fp8_to_float(kernels::fp8_from_float(-1e9f, f), f) == -kernels::fp8_max(f));
    torch::manual_seed(3);
    auto values = torch::randn({4000}, torch::kDouble) * torch::pow(2.0, torch::randint(-12, 9, {4000}, torch::kDouble));
    for (int64_t i = 0; i < values.size(0); ++i) {
      const float v = static_cast<float>(values[i].item<double>());
      INFO("value " << v);
      REQUIRE(kernels::fp8_from_float(v, f) == nearest(v, f));
    }
  }
}

TEST_CASE("the FP8 quantize reference matches the fp64 formula for every granularity, ragged shapes too", "[kernels]") {
  torch::manual_seed(7);
  const auto shape = GENERATE(std::pair<int64_t, int64_t>{200, 272}, std::pair<int64_t, int64_t>{130, 384},
                              std::pair<int64_t, int64_t>{256, 144});
  const auto [rows, cols] = shape;
  // Rows of very different magnitudes, and one all-zero row: the scales must follow.
  auto x = torch::randn({rows, cols}, torch::kFloat) * torch::pow(2.0, torch::randint(-6, 6, {rows, 1})).to(torch::kFloat);
  x[3].zero_();
  const int64_t ld_t = kernels::round_up(rows, 16);
  for (auto g : {ScaleGranularity::tensor, ScaleGranularity::row, ScaleGranularity::tile, ScaleGranularity::block})
    for (auto f : {Fp8Format::e4m3, Fp8Format::e5m2})
      for (bool pow2 : {false, true}) {
        INFO(name_of(g) << " " << (f == Fp8Format::e4m3 ? "e4m3" : "e5m2") << " pow2 " << pow2 << " " << rows << "x" << cols);
        const auto r = quantize_ref(x, g, f, pow2, ld_t);
        auto xd = x.to(torch::kDouble);
        int64_t checked = 0;
        for (int64_t i = 0; i < rows; i += 7)
          for (int64_t j = 0; j < cols; j += 5) {
            const auto [r0, r1, c0, c1] = run_of(g, rows, cols, i, j);
            const double amax = xd.slice(0, r0, r1).slice(1, c0, c1).abs().max().item<double>();
            const float s = formula_scale(amax, f, pow2);
            REQUIRE(r.scale[kernels::fp8_scale_index(g, rows, cols, i, j)].item<float>() == s);
            const double v = static_cast<double>(x[i][j].item<float>() * (1.0f / s));
            REQUIRE(r.q[i][j].item<uint8_t>() == nearest(v, f));
            // The transposed copy: the run of (j, i) in the transpose, which for row and tile is
            // along the input's column.
            const auto [tr0, tr1, tc0, tc1] = run_of(g, cols, rows, j, i);
            const double tmax = xd.t().slice(0, tr0, tr1).slice(1, tc0, tc1).abs().max().item<double>();
            const float ts = formula_scale(tmax, f, pow2);
            REQUIRE(r.scale_t[kernels::fp8_scale_index(g, cols, ld_t, j, i)].item<float>() == ts);
            REQUIRE(r.q_t[j][i].item<uint8_t>() == nearest(static_cast<double>(x[i][j].item<float>() * (1.0f / ts)), f));
            ++checked;
          }
        CHECK(checked > 1000);
        // Padding columns of the transpose are zeros; the dequantized values are within half a step.
        if (ld_t > rows) CHECK(r.q_t.slice(1, rows, ld_t).eq(0).all().item<bool>());
        CHECK(r.q[3].eq(0).all().item<bool>());
      }
}

TEST_CASE("FP8 recipes: scales, formats and the small-GEMM rule", "[kernels]") {
  using kernels::Float8Recipe;
  CHECK(kernels::parse_float8_recipe("rowwise") == Float8Recipe::rowwise);
  CHECK_THROWS_WITH(kernels::parse_float8_recipe("rowise"), Catch::Contains("tensorwise | rowwise"));
  const auto t = kernels::float8_scaling(Float8Recipe::tensorwise);
  CHECK((t.input == ScaleGranularity::tensor && t.grad_format == Fp8Format::e5m2 && !t.pow2));
  const auto r = kernels::float8_scaling(Float8Recipe::rowwise);
  CHECK((r.input == ScaleGranularity::row && r.weight == ScaleGranularity::row && r.grad_format == Fp8Format::e4m3 &&
         r.pow2 && !r.weight_grad_high_precision));
  CHECK(kernels::float8_scaling(Float8Recipe::rowwise_with_gw_hp).weight_grad_high_precision);
  const auto b = kernels::float8_scaling(Float8Recipe::blockwise);
  CHECK((b.input == ScaleGranularity::tile && b.weight == ScaleGranularity::block && b.grad == ScaleGranularity::tile &&
         !b.fast_accum_forward));
  CHECK(kernels::float8_small_kn_reason(4096, 2048).empty());
  CHECK(kernels::float8_small_kn_reason(1000, 2048) == "a dimension is not a multiple of 16");
  CHECK(kernels::float8_small_kn_reason(512, 2048) == "a dimension is below 1024");
  CHECK_THAT(kernels::float8_device_problem("cpu", Float8Recipe::rowwise), Catch::Contains("FP8 tensor cores"));
  // Scale layouts as cuBLASLt reads them: tile scales row-contiguous, block scales padded to 4.
  CHECK(kernels::fp8_scale_count(ScaleGranularity::tile, 200, 272) == 3 * 200);
  CHECK(kernels::fp8_scale_index(ScaleGranularity::tile, 200, 272, 5, 130) == 200 + 5);
  CHECK(kernels::fp8_scale_count(ScaleGranularity::block, 200, 272) == 2 * 4);
  CHECK(kernels::fp8_scale_index(ScaleGranularity::block, 200, 272, 130, 260) == 4 + 2);
}

TEST_CASE("config: [quantize.linear.float8] as torchtitan writes it, and its errors", "[config]") {
  testing::TempDir dir;
  const auto path = dir.write("fp8.toml", R"([model]
converters = ["quantize.linear.float8"]
[quantize.linear.float8]
recipe_name = "rowwise"
filter_fqns = ["output", "auto_filter_small_kn"]
)");
  auto cfg = config::load_job_config(path);
  CHECK(cfg.model.converters == std::vector<std::string>{"quantize.linear.float8"});
  CHECK(cfg.float8.recipe_name == "rowwise");
  CHECK(cfg.float8.filter_fqns == std::vector<std::string>{"output", "auto_filter_small_kn"});
  cfg = config::load_job_config(path, {{"quantize.linear.float8.recipe_name", "blockwise"}});
  CHECK(cfg.float8.recipe_name == "blockwise");
  CHECK_THROWS_WITH(config::load_job_config(path, {{"quantize.linear.float8.recipe_name", "rowwize"}}),
                    Catch::Contains("quantize.linear.float8.recipe_name must be one of tensorwise"));
  CHECK_THROWS_WITH(config::load_job_config(path, {{"model.converters", "float8"}}),
                    Catch::Contains("model.converters must be a list of quantize.linear.float8"));
  // A recipe without the converter would do nothing.
  CHECK_THROWS_WITH(config::load_job_config(path, {{"model.converters", ""}}),
                    Catch::Contains("unless model.converters has"));
  // FP8 all-gather sends one scale per weight: tensorwise only; the precompute needs it.
  CHECK_THROWS_WITH(config::load_job_config(path, {{"quantize.linear.float8.enable_fsdp_float8_all_gather", "true"},
                                                   {"parallelism.data_parallel_shard_degree", "2"}}),
                    Catch::Contains("quantize.linear.float8.enable_fsdp_float8_all_gather must be false unless "
                                    "quantize.linear.float8.recipe_name is \"tensorwise\""));
  cfg = config::load_job_config(path, {{"quantize.linear.float8.recipe_name", "tensorwise"},
                                       {"quantize.linear.float8.enable_fsdp_float8_all_gather", "true"},
                                       {"quantize.linear.float8.precompute_float8_dynamic_scale_for_fsdp", "true"},
                                       {"parallelism.data_parallel_shard_degree", "2"}});
  CHECK(cfg.float8.enable_fsdp_float8_all_gather);
  CHECK(cfg.float8.precompute_float8_dynamic_scale_for_fsdp);
  CHECK_THROWS_WITH(config::load_job_config(path, {{"quantize.linear.float8.recipe_name", "tensorwise"},
                                                   {"quantize.linear.float8.precompute_float8_dynamic_scale_for_fsdp",
                                                    "true"}}),
                    Catch::Contains("unless quantize.linear.float8.enable_fsdp_float8_all_gather is true"));
  CHECK_THROWS_WITH(config::load_job_config(path, {{"parallelism.enable_async_tensor_parallel", "true"},
                                                   {"parallelism.tensor_parallel_degree", "2"}}),
                    Catch::Contains("asynchronous TP do not compute in FP8 yet"));
  const auto typo = dir.write("typo.toml", "[quantize.linear.float9]\nrecipe_name = \"rowwise\"\n");
  CHECK_THROWS_WITH(config::load_job_config(typo),
                    Catch::Contains("typo.toml:1: unknown section 'quantize.linear.float9'") &&
                        Catch::Contains("did you mean 'quantize.linear.float8'"));
  const auto stray = dir.write("stray.toml", "[quantize]\nrecipe_name = \"rowwise\"\n");
  CHECK_THROWS_WITH(config::load_job_config(stray), Catch::Contains("belongs in a section"));
}

TEST_CASE("FP8 on the CPU is refused at start-up with the key named, exit 2", "[cli]") {
  testing::TempDir dir;
  auto cfg = testing::small_job_config(dir);
  cfg.job.device = "cpu";
  cfg.model.converters = {"quantize.linear.float8"};
  CHECK_THROWS_WITH(train::check_layout(cfg, 1, *train::job_model(cfg)),
                    Catch::Contains("model.converters has \"quantize.linear.float8\": FP8 needs a GPU"));
  const auto out = dir.file("out.txt");
  const int status = testing::run_command(testing::troupe_binary() + " train --job.device cpu --training.steps 1 " +
                                          "--lr_scheduler.warmup_steps 0 " +
                                          "--model.converters quantize.linear.float8 --job.dump_folder " +
                                          dir.file("dump") + " > " + out + " 2>&1");
  std::ifstream f(out);
  const std::string text((std::istreambuf_iterator<char>(f)), {});
  INFO(text);
  CHECK(status == 2);
  CHECK_THAT(text, Catch::Contains("FP8 needs a GPU with FP8 tensor cores; this job runs on cpu"));
  CHECK(std::count(text.begin(), text.end(), '\n') <= 3);
}

TEST_CASE("the Float8 converter picks every block projection, keeps the filtered ones and says why", "[kernels]") {
  config::JobConfig c;
  c.model.tokenizer_path = testing::source_dir() + "/data/kjv/tokenizer.json";
  auto arch = train::job_model(c);
  auto model = arch->build(torch::TensorOptions().dtype(torch::kFloat), 64, nullptr);
  const auto n_layers = arch->n_blocks();
  {
    kernels::Float8Linears linears(kernels::Float8Recipe::rowwise);
    config::Float8Section s;  // filter_fqns = ["output"]
    const auto conv = train::convert_to_float8(*model, s, linears);
    CHECK(conv.converted.size() == static_cast<size_t>(7 * n_layers));  // wq wk wv wo w1 w2 w3
    CHECK(linears.size() == conv.converted.size());
    CHECK(model->weight_services().float8 == &linears);
    CHECK(std::ranges::find(conv.converted, "layers.0.attention.wq") != conv.converted.end());
    REQUIRE(conv.kept.size() == 1);
    CHECK(conv.kept[0].first == "output");
    const auto text = conv.describe(linears.recipe());
    INFO(text);
    CHECK_THAT(text, Catch::Contains("FP8 (rowwise): " + std::to_string(7 * n_layers) + " projections") &&
                         Catch::Contains("layers.*.attention.wq (" + std::to_string(n_layers) + ")") &&
                         Catch::Contains("auto_filter_small_kn keeps"));
  }
  {
    // The debug model's projections are all below 1024 wide: the automatic filter keeps them all.
    kernels::Float8Linears linears(kernels::Float8Recipe::tensorwise);
    config::Float8Section s;
    s.filter_fqns = {"auto_filter_small_kn"};
    const auto conv = train::convert_to_float8(*model, s, linears);
    CHECK(conv.converted.empty());
    CHECK(conv.kept.size() == static_cast<size_t>(7 * n_layers + 1));
    CHECK_THAT(conv.describe(linears.recipe()), Catch::Contains("auto_filter_small_kn: a dimension is below 1024"));
  }
  {
    kernels::Float8Linears linears(kernels::Float8Recipe::tensorwise);
    config::Float8Section s;
    s.filter_fqns = {"output", "attention"};
    const auto conv = train::convert_to_float8(*model, s, linears);
    CHECK(conv.converted.size() == static_cast<size_t>(3 * n_layers));
    for (const auto& n : conv.converted) CHECK(n.find("feed_forward") != std::string::npos);
  }
}

#ifdef TROUPE_WITH_CUDA

namespace {

at::Tensor gpu_bytes(const at::Tensor& t) { return t.cpu(); }

}  // namespace

TEST_CASE("FP8 quantize kernels on CUDA write the reference's bytes and scales", "[gpu]") {
  REQUIRE(torch::cuda::is_available());
  torch::manual_seed(11);
  for (auto [rows, cols] : {std::pair<int64_t, int64_t>{256, 512}, {200, 272}, {130, 1040}, {1000, 144}, {96, 100}, {33, 50}})
    for (auto dtype : {torch::kBFloat16, torch::kFloat})
      for (auto g : {ScaleGranularity::tensor, ScaleGranularity::row, ScaleGranularity::tile, ScaleGranularity::block})
        for (auto f : {Fp8Format::e4m3, Fp8Format::e5m2})
          for (bool pow2 : {false, true}) {
            INFO(name_of(g) << " " << rows << "x" << cols << " " << dtype << " e5m2 " << (f == Fp8Format::e5m2)
                            << " pow2 " << pow2);
            auto x = (torch::randn({rows, cols}) * torch::pow(2.0, torch::randint(-6, 6, {rows, 1})).to(torch::kFloat))
                         .to(dtype);
            const int64_t ld_t = kernels::round_up(rows, 16);
            const auto ref = quantize_ref(x, g, f, pow2, ld_t);
            auto xg = x.cuda();
            Quantized got;
            auto a = args_for(xg, g, f, pow2, got, ld_t);
            auto ws = torch::empty({std::max<int64_t>(1, kernels::fp8_quantize_workspace(a))},
                                   xg.options().dtype(torch::kFloat));
            kernels::fp8_quantize(a, ws.data_ptr<float>(), at::cuda::getCurrentCUDAStream().stream());
            CHECK(torch::equal(gpu_bytes(got.scale), ref.scale));
            CHECK(torch::equal(gpu_bytes(got.scale_t), ref.scale_t));
            CHECK(torch::equal(gpu_bytes(got.q), ref.q));
            CHECK(torch::equal(gpu_bytes(got.q_t), ref.q_t));
          }
}

namespace {

// The dequantized values of a quantized [rows, k] operand, fp64 on the CPU.
at::Tensor dequantize(const Quantized& q, bool transposed, ScaleGranularity g, Fp8Format f, int64_t rows, int64_t k) {
  auto bytes = (transposed ? q.q_t : q.q).cpu();
  auto scales = (transposed ? q.scale_t : q.scale).cpu();
  auto out = torch::empty({rows, k}, torch::kDouble);
  auto acc = out.accessor<double, 2>();
  auto b = bytes.accessor<uint8_t, 2>();
  auto s = scales.accessor<float, 1>();
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < k; ++c) acc[r][c] = decode(b[r][c], f) * s[kernels::fp8_scale_index(g, rows, k, r, c)];
  return out;
}

Quantized quantize_gpu(const at::Tensor& x, ScaleGranularity g, Fp8Format f, int64_t ld_t) {
  Quantized out;
  auto a = args_for(x, g, f, false, out, ld_t);
  auto ws = torch::empty({std::max<int64_t>(1, kernels::fp8_quantize_workspace(a))}, x.options().dtype(torch::kFloat));
  kernels::fp8_quantize(a, ws.data_ptr<float>(), at::cuda::getCurrentCUDAStream().stream());
  return out;
}

}  // namespace

TEST_CASE("FP8 GEMMs on cuBLASLt match fp64 of the dequantized operands within 1e-2", "[gpu]") {
  REQUIRE(torch::cuda::is_available());
  torch::manual_seed(12);
  struct Combo {
    ScaleGranularity a, b;
    Fp8Format fa;
  };
  const std::vector<Combo> combos = {{ScaleGranularity::tensor, ScaleGranularity::tensor, Fp8Format::e4m3},
                                     {ScaleGranularity::tensor, ScaleGranularity::tensor, Fp8Format::e5m2},
                                     {ScaleGranularity::row, ScaleGranularity::row, Fp8Format::e4m3},
                                     {ScaleGranularity::tile, ScaleGranularity::block, Fp8Format::e4m3},
                                     {ScaleGranularity::tile, ScaleGranularity::tile, Fp8Format::e4m3}};
  for (auto [m, n, k] : {std::array<int64_t, 3>{256, 512, 384}, {200, 272, 400}, {1024, 1040, 1024}})
    for (const auto& combo : combos)
      for (auto out_dtype : {torch::kBFloat16, torch::kFloat})
        for (bool accumulate : {false, true}) {
          INFO(name_of(combo.a) << " x " << name_of(combo.b) << " m n k " << m << " " << n << " " << k << " "
                                << out_dtype << " accumulate " << accumulate);
          auto a = torch::randn({m, k}, torch::kCUDA).to(torch::kBFloat16);
          auto b = (torch::randn({n, k}, torch::kCUDA) * 0.05).to(torch::kFloat);
          auto qa = quantize_gpu(a, combo.a, combo.fa, m);
          auto qb = quantize_gpu(b, combo.b, Fp8Format::e4m3, n);
          auto out = torch::randn({m, n}, torch::TensorOptions().dtype(out_dtype).device(torch::kCUDA));
          const auto before = out.to(torch::kDouble).cpu();
          kernels::fp8_gemm({qa.q.data_ptr<uint8_t>(), m, k, combo.fa, combo.a, qa.scale.data_ptr<float>()},
                            {qb.q.data_ptr<uint8_t>(), n, k, Fp8Format::e4m3, combo.b, qb.scale.data_ptr<float>()}, k,
                            out_dtype == torch::kFloat ? kernels::Dtype::f32 : kernels::Dtype::bf16, out.data_ptr(), n,
                            accumulate, false, at::cuda::getCurrentCUDABlasLtHandle(),
                            at::cuda::getCUDABlasLtWorkspace(),
                            static_cast<int64_t>(at::cuda::getCUDABlasLtWorkspaceSize()),
                            at::cuda::getCurrentCUDAStream().stream());
          auto expect = torch::mm(dequantize(qa, false, combo.a, combo.fa, m, k),
                                  dequantize(qb, false, combo.b, Fp8Format::e4m3, n, k).t());
          if (accumulate) expect = expect + before;
          CHECK(testing::relative_error(out.cpu(), expect) < 1e-2);
        }
}

TEST_CASE("an FP8 projection's output and gradients match bf16's within each recipe's tolerance", "[gpu]") {
  REQUIRE(torch::cuda::is_available());
  const auto recipe = GENERATE(kernels::Float8Recipe::tensorwise, kernels::Float8Recipe::rowwise,
                               kernels::Float8Recipe::rowwise_with_gw_hp, kernels::Float8Recipe::blockwise);
  INFO(kernels::float8_recipe_name(recipe));
  torch::manual_seed(13);
  // Two projections of one input (as q/k/v share theirs), a ragged token count (4 x 50).
  auto x0 = torch::randn({4, 50, 1024}, torch::kCUDA).to(torch::kBFloat16);
  auto w1 = (torch::randn({1536, 1024}, torch::kCUDA) * 0.03).set_requires_grad(true);
  auto w2 = (torch::randn({1024, 1024}, torch::kCUDA) * 0.03).set_requires_grad(true);
  auto dy1 = torch::randn({4, 50, 1536}, torch::kCUDA).to(torch::kBFloat16);
  auto dy2 = torch::randn({4, 50, 1024}, torch::kCUDA).to(torch::kBFloat16);
  struct Result {
    at::Tensor y1, y2, dx, dw1, dw2;
  };
  auto run = [&](const kernels::WeightServices* services, bool fp64) {
    auto x = (fp64 ? x0.to(torch::kDouble) : x0).detach().set_requires_grad(true);
    auto v1 = fp64 ? w1.detach().to(torch::kDouble).set_requires_grad(true) : w1;
    auto v2 = fp64 ? w2.detach().to(torch::kDouble).set_requires_grad(true) : w2;
    if (!fp64) w1.mutable_grad() = at::Tensor(), w2.mutable_grad() = at::Tensor();
    auto ys = kernels::linear_group(x, {v1, v2}, {}, services);
    torch::autograd::backward({ys[0], ys[1]}, {dy1.to(ys[0].scalar_type()), dy2.to(ys[1].scalar_type())});
    return Result{ys[0].cpu().to(torch::kDouble), ys[1].cpu().to(torch::kDouble), x.grad().cpu().to(torch::kDouble),
                  v1.grad().cpu().to(torch::kDouble), v2.grad().cpu().to(torch::kDouble)};
  };
  const auto exact = run(nullptr, true);
  const auto bf16 = run(nullptr, false);
  kernels::Float8Linears linears(recipe);
  linears.add(w1);
  linears.add(w2);
  kernels::WeightServices services;
  services.float8 = &linears;
  const auto fp8 = run(&services, false);
  CHECK(fp8.dw1.sizes() == w1.sizes());
  // e4m3's relative rounding error is at most 2^-4 (rms about 2^-4 / sqrt(3) after the scale):
  // a GEMM of such operands errs by a few percent; e5m2 gradients (tensorwise) by twice that.
  const double tol_fwd = 0.05, tol_grad = recipe == kernels::Float8Recipe::tensorwise ? 0.1 : 0.05;
  auto err = [&](const at::Tensor& a, const at::Tensor& b) { return testing::relative_error(a, b); };
  INFO("y " << err(fp8.y1, exact.y1) << " dx " << err(fp8.dx, exact.dx) << " dw " << err(fp8.dw1, exact.dw1)
            << " (bf16: " << err(bf16.y1, exact.y1) << " " << err(bf16.dx, exact.dx) << " " << err(bf16.dw1, exact.dw1)
            << ")");
  CHECK(err(fp8.y1, exact.y1) < tol_fwd);
  CHECK(err(fp8.y2, exact.y2) < tol_fwd);
  CHECK(err(fp8.dx, exact.dx) < tol_grad);
  CHECK(err(fp8.dw2, exact.dw2) < tol_grad);
  // It did compute in FP8: further from fp64 than bf16 is.
  CHECK(err(fp8.y1, exact.y1) > 2 * err(bf16.y1, exact.y1));
  // Under FSDP the weights arrive gathered in bf16 and their gradients go to fp32 sinks: the FP8
  // weight-gradient GEMM writes there (twice: the second use adds), autograd gets none.
  {
    auto wb = w1.detach().to(torch::kBFloat16).set_requires_grad(true);
    kernels::Float8Linears bf16_linears(recipe);
    bf16_linears.add(wb);
    kernels::GradientSinks sinks;
    kernels::WeightServices sunk{nullptr, &sinks, &bf16_linears};
    sinks.add(wb);
    auto sink = torch::full({1536, 1024}, NAN, torch::dtype(torch::kFloat).device(torch::kCUDA));
    sinks.open(wb, sink);
    for (int use = 0; use < 2; ++use) {
      auto x = x0.detach().set_requires_grad(true);
      kernels::linear_group(x, {wb}, {}, &sunk)[0].backward(dy1);
    }
    CHECK(sinks.close(wb));
    CHECK(!wb.grad().defined());
    INFO("sink " << err(sink.cpu().to(torch::kDouble), 2 * exact.dw1));
    CHECK(err(sink.cpu().to(torch::kDouble), 2 * exact.dw1) < tol_grad);
  }
  if (recipe == kernels::Float8Recipe::rowwise_with_gw_hp)
    CHECK(err(fp8.dw1, exact.dw1) < 2 * err(bf16.dw1, exact.dw1) + 1e-3);  // the weight gradient in bf16
  else
    CHECK(err(fp8.dw1, exact.dw1) < tol_grad);
}

TEST_CASE("200 steps of the debug model with each FP8 recipe track bf16", "[gpu]") {
  REQUIRE(torch::cuda::is_available());
  config::JobConfig c;
  c.job.device = "cuda";
  c.model.tokenizer_path = testing::source_dir() + "/data/kjv/tokenizer.json";
  c.training.local_batch_size = 8;
  c.training.seq_len = 256;
  c.training.steps = 200;
  c.lr_scheduler.warmup_steps = 20;
  const auto vocab = data::Tokenizer::load(c.model.tokenizer_path).vocab_size();
  auto run = [&](const std::string& recipe) {
    auto cfg = c;
    if (!recipe.empty()) {
      cfg.model.converters = {"quantize.linear.float8"};
      cfg.float8.recipe_name = recipe;
    }
    data::BatchSource src(cfg);
    train::Trainer trainer(cfg, train::job_model(cfg, vocab));
    double tail = 0;
    for (int64_t s = 1; s <= cfg.training.steps; ++s) {
      const double loss = trainer.step(s, {std::make_shared<const data::Batch>(src.next())}).loss;
      if (s > cfg.training.steps - 20) tail += loss / 20;
    }
    return tail;
  };
  const double bf16 = run("");
  for (const std::string recipe : {"tensorwise", "rowwise", "rowwise_with_gw_hp", "blockwise"}) {
    const double fp8 = run(recipe);
    INFO(recipe << ": mean loss of the last 20 steps " << fp8 << ", bf16 " << bf16);
    CHECK(std::abs(fp8 - bf16) / bf16 < 0.03);
  }
  CHECK(bf16 < 5.0);  // it trained: agreeing means something
}

TEST_CASE("FSDP's FP8 all-gather on CUDA trains as one rank's tensorwise FP8 does: the gathered bytes are the "
          "whole master's quantization (FSDP over a one-rank NCCL group)",
          "[gpu]") {
  REQUIRE(torch::cuda::is_available());
  config::JobConfig c;
  c.job.device = "cuda";
  c.model.tokenizer_path = testing::source_dir() + "/data/kjv/tokenizer.json";
  c.model.converters = {"quantize.linear.float8"};
  c.float8.recipe_name = "tensorwise";
  c.training.local_batch_size = 4;
  c.training.seq_len = 256;
  c.training.steps = 12;
  c.lr_scheduler.warmup_steps = 2;
  const auto vocab = data::Tokenizer::load(c.model.tokenizer_path).vocab_size();
  auto run = [&](bool sharded, bool gather, bool precompute) {
    auto cfg = c;
    cfg.float8.enable_fsdp_float8_all_gather = gather;
    cfg.float8.precompute_float8_dynamic_scale_for_fsdp = precompute;
    parallel::RankContext rank;
    if (sharded) rank = {0, 0, 1, comm::Rendezvous::in_process(std::chrono::minutes(2)), true, nullptr};
    data::BatchSource src(cfg);
    train::Trainer trainer(cfg, train::job_model(cfg, vocab), rank);
    std::vector<double> losses;
    for (int64_t s = 1; s <= cfg.training.steps; ++s)
      losses.push_back(trainer.step(s, {std::make_shared<const data::Batch>(src.next())}).loss);
    return losses;
  };
  const auto one = run(false, false, false);
  const auto gathered_bf16 = run(true, false, false);
  for (const bool precompute : {false, true}) {
    const auto fp8_gathered = run(true, true, precompute);
    for (size_t i = 0; i < one.size(); ++i) {
      INFO("precompute " << precompute << ", step " << i + 1 << ": one rank " << one[i] << ", FSDP with FP8 all-gather "
                         << fp8_gathered[i] << ", FSDP gathering bf16 " << gathered_bf16[i]);
      CHECK(std::abs(fp8_gathered[i] - one[i]) < 1e-3 * one[i]);
      CHECK(std::abs(gathered_bf16[i] - one[i]) < 2e-2 * one[i]);
    }
  }
  CHECK(one.back() < one.front() - 0.5);  // it trained
}

TEST_CASE("a run saved with FP8 resumes with FP8 or without it (checkpoints hold no FP8 state)", "[gpu]") {
  REQUIRE(torch::cuda::is_available());
  testing::TempDir dir;
  auto c = testing::small_job_config(dir);
  c.job.device = "cuda";
  c.checkpoint.enable = true;
  c.checkpoint.interval = 3;
  c.model.converters = {"quantize.linear.float8"};
  c.float8.recipe_name = "rowwise";
  const auto whole = testing::run_with_timeout(c);
  REQUIRE(whole.exit_code == 0);
  REQUIRE(whole.steps.size() == 6);
  auto resume = [&](bool fp8) {
    auto r = c;
    r.checkpoint.load_step = 3;
    if (!fp8) r.model.converters.clear(), r.float8.recipe_name = "tensorwise";
    const auto out = testing::run_with_timeout(r);
    REQUIRE(out.exit_code == 0);
    REQUIRE(out.steps.size() == 3);
    return out;
  };
  const auto with = resume(true), without = resume(false);
  for (size_t i = 0; i < 3; ++i) {
    INFO("step " << i + 4 << ": whole " << whole.steps[i + 3].loss << ", resumed with FP8 " << with.steps[i].loss
                 << ", without " << without.steps[i].loss);
    CHECK(with.steps[i].step == static_cast<int64_t>(i + 4));
    CHECK(std::abs(with.steps[i].loss - whole.steps[i + 3].loss) < 1e-3 * whole.steps[i + 3].loss);
    CHECK(std::abs(without.steps[i].loss - whole.steps[i + 3].loss) < 3e-2 * whole.steps[i + 3].loss);
  }
}

#endif  // TROUPE_WITH_CUDA
