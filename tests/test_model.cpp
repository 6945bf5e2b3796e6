// The Llama 3 model: parameter counts, agreement with Hugging Face transformers, gradients.
#include <catch2/catch.hpp>
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <fstream>

#include "checkpoint/module_state.h"
#include "checkpoint/safetensors.h"
#include "models/llama3/hf_conversion.h"
#include "models/llama3/model.h"
#include "test_support.h"
#include "train/unit_executor.h"

using namespace troupe;
using models::llama3::Llama3Model;
using models::llama3::ModelArgs;

namespace {

int64_t count_on_meta(const ModelArgs& args) {
  Llama3Model model(args, at::TensorOptions().device(at::kMeta).dtype(at::kFloat));
  int64_t n = 0;
  for (const auto& p : model.parameters()) n += p.numel();
  return n;
}

}  // namespace

TEST_CASE("published parameter counts per flavor", "[model]") {
  // Published totals (Meta's model cards / torchtitan); analytic and built-on-meta must agree.
  const std::vector<std::pair<std::string, int64_t>> expected{
      {"debugmodel", 6'163'712},       {"1B", 1'235'814'400},       {"1.5B", 1'498'482'688},
      {"1.5B_2layers", 646'981'632},  // the 1.5B less 14 blocks of 60,821,504
      {"3B", 3'212'749'824},
      {"8B", 8'030'261'248},
      {"8B_16layers", 4'540'469'248},  // the 8B less 16 blocks of 218,112,000
      {"70B", 70'553'706'496},     {"405B", 405'853'388'800}};
  for (const auto& [name, count] : expected) {
    INFO(name);
    auto args = models::llama3::flavor(name);
    CHECK(args.num_params() == count);
    CHECK(count_on_meta(args) == count);
  }
}

TEST_CASE("unknown flavor is rejected with the known ones listed", "[model]") {
  REQUIRE_THROWS_WITH(models::llama3::flavor("7B"), Catch::Contains("7B") && Catch::Contains("debugmodel"));
}

namespace {

struct OracleCase {
  std::string name;
  ModelArgs args;
  std::string flags;  // extra flags for hf_llama_oracle.py
};

void compare_with_hf(const OracleCase& c, int64_t batch, int64_t seq) {
  testing::TempDir dir;
  const auto& a = c.args;
  const auto cmd = "python3 " + testing::source_dir() + "/tests/oracle/hf_llama_oracle.py " + dir.path().string() +
                   " --dim " + std::to_string(a.dim) + " --layers " + std::to_string(a.n_layers) + " --heads " +
                   std::to_string(a.n_heads) + " --kv_heads " + std::to_string(a.kv_heads()) + " --ffn " +
                   std::to_string(a.ffn_hidden_dim()) + " --vocab " + std::to_string(a.vocab_size) + " --batch " +
                   std::to_string(batch) + " --seq " + std::to_string(seq) + " --rope_theta " +
                   std::to_string(a.rope_theta) + " --norm_eps " + std::to_string(a.norm_eps) + " " + c.flags;
  REQUIRE(testing::run_command(cmd) == 0);
  auto hf = checkpoint::read_safetensors(dir.file("hf_model.safetensors"));
  auto io = checkpoint::read_safetensors(dir.file("batch.safetensors"));
  std::ifstream loss_file(dir.file("loss.json"));
  const double hf_loss = nlohmann::json::parse(loss_file)["loss"].get<double>();

  Llama3Model model(a, at::TensorOptions().dtype(at::kFloat));
  checkpoint::load_parameters(model, models::llama3::from_hf(hf, a));
  torch::NoGradGuard no_grad;
  const auto logits = model.logits(io.at("tokens"));
  const auto loss = model.loss({io.at("tokens"), io.at("targets")}).item<double>();
  CHECK(testing::relative_error(logits, io.at("logits")) < 1e-5);
  CHECK(std::abs(loss - hf_loss) / hf_loss < 1e-5);
  // And back: exporting our parameters under HF names reproduces HF's tensors exactly.
  auto round_trip = models::llama3::to_hf(checkpoint::parameters_of(model), a);
  for (const auto& [name, t] : round_trip) CHECK(torch::equal(t, hf.at(name)));
}

}  // namespace

TEST_CASE("debug flavor matches Hugging Face LlamaForCausalLM", "[oracle]") {
  auto args = models::llama3::flavor("debugmodel");
  args.max_seq_len = 64;
  compare_with_hf({"debugmodel", args, ""}, 2, 64);
}

TEST_CASE("Llama 3.1 rope scaling, GQA and tied embeddings match Hugging Face", "[oracle]") {
  ModelArgs args;
  args.dim = 128;
  args.n_layers = 2;
  args.n_heads = 4;
  args.n_kv_heads = 2;
  args.vocab_size = 300;
  args.multiple_of = 64;
  args.ffn_dim_multiplier = 1.3;
  args.rope_theta = 500000.0;
  args.rope_scaling = models::llama3::RopeScaling{8.0, 1.0, 4.0, 8192};
  args.tie_embeddings = true;
  args.max_seq_len = 48;
  compare_with_hf({"scaled", args, "--rope_factor 8 --low_freq_factor 1 --high_freq_factor 4 --original_max_pos 8192 --tied"},
                  3, 48);
}

namespace {

ModelArgs tiny_args() {
  ModelArgs a;
  a.dim = 16;
  a.n_layers = 2;
  a.n_heads = 4;
  a.n_kv_heads = 2;
  a.vocab_size = 24;
  a.multiple_of = 8;
  a.max_seq_len = 5;
  a.rope_scaling = models::llama3::RopeScaling{8.0, 1.0, 4.0, 16};
  return a;
}

std::shared_ptr<Llama3Model> tiny_model(at::ScalarType dtype) {
  auto m = std::make_shared<Llama3Model>(tiny_args(), at::TensorOptions().dtype(dtype));
  m->init_weights(7);
  // Norm weights start at one; perturb them so their gradients are exercised generically.
  torch::NoGradGuard no_grad;
  for (auto& item : m->named_parameters())
    if (item.key().find("norm") != std::string::npos) item.value().add_(0.1 * torch::randn_like(item.value()));
  return m;
}

models::UnitBatch tiny_batch() {
  torch::manual_seed(3);
  return {torch::randint(0, 24, {2, 5}, torch::kLong), torch::randint(0, 24, {2, 5}, torch::kLong)};
}

// Central difference of f along one coordinate of `t`.
double central_difference(at::Tensor& t, int64_t index, const std::function<double()>& f, double eps) {
  auto flat = t.view({-1});
  torch::NoGradGuard no_grad;
  const double orig = flat[index].item<double>();
  flat[index].fill_(orig + eps);
  const double up = f();
  flat[index].fill_(orig - eps);
  const double down = f();
  flat[index].fill_(orig);
  return (up - down) / (2 * eps);
}

}  // namespace

TEST_CASE("per-unit backward matches central finite differences in float64", "[grad]") {
  auto model = tiny_model(at::kDouble);
  const auto batch = tiny_batch();
  const auto& units = model->units();
  for (bool recompute : {false, true}) {
    train::UnitExecutor exec(units, std::vector<bool>(units.size(), recompute));
    // Activations entering each unit, from an honest forward.
    std::vector<at::Tensor> inputs(units.size());
    for (size_t i = 0; i < units.size(); ++i) {
      auto out = exec.forward_unit(i, inputs[i], batch);
      if (i + 1 < units.size()) inputs[i + 1] = out;
    }
    for (size_t i = 0; i < units.size(); ++i) {
      INFO("unit " << i << (recompute ? " (recomputed)" : ""));
      model->zero_grad();
      const bool last = i + 1 == units.size();
      auto probe = last ? torch::ones({}, torch::kDouble) : torch::randn_like(exec.forward_unit(i, inputs[i], batch));
      if (last) exec.forward_unit(i, inputs[i], batch);
      auto grad_input = exec.backward_unit(i, probe);
      at::Tensor input = inputs[i].defined() ? inputs[i].clone() : at::Tensor();
      auto f = [&] {
        torch::NoGradGuard no_grad;
        return (units[i]->forward(input, batch) * probe).sum().item<double>();
      };
      if (input.defined())
        for (int64_t k : {0L, 7L, input.numel() - 1})
          CHECK(central_difference(input, k, f, 1e-5) == Approx(grad_input.view({-1})[k].item<double>()).epsilon(1e-5).margin(1e-8));
      for (auto& item : units[i]->named_parameters()) {
        INFO(item.key());
        auto param = item.value();
        auto grad = param.grad().view({-1});
        for (int64_t k : {0L, param.numel() / 2, param.numel() - 1})
          CHECK(central_difference(param, k, f, 1e-5) == Approx(grad[k].item<double>()).epsilon(1e-5).margin(1e-8));
      }
    }
  }
}

TEST_CASE("unit-by-unit gradients equal one autograd pass over the whole model", "[grad]") {
  auto model = tiny_model(at::kDouble);
  const auto batch = tiny_batch();
  model->zero_grad();
  auto whole_loss = model->loss(batch);
  whole_loss.backward();
  std::map<std::string, at::Tensor> reference;
  for (auto& item : model->named_parameters()) reference[item.key()] = item.value().grad().clone();
  // "op": the blocks recompute their norms' and SwiGLU's outputs in the backward, alone and
  // inside units that are recomputed whole.
  for (const char* mode : {"none", "full", "selective", "op", "op+full"}) {
    INFO(mode);
    const std::string m = mode;
    model->zero_grad();
    model->recompute_elementwise(m.starts_with("op"));
    const auto unit_mode = m == "op" ? "none" : m == "op+full" ? "full" : mode;
    train::UnitExecutor exec(model->units(), train::recompute_plan(model->units().size(), unit_mode, 2));
    auto loss = exec.forward(batch);
    CHECK(loss.item<double>() == Approx(whole_loss.item<double>()).epsilon(1e-12));
    exec.backward(1.0);
    for (auto& item : model->named_parameters()) {
      INFO(item.key());
      CHECK(testing::relative_error(item.value().grad(), reference.at(item.key())) < 1e-12);
    }
  }
  model->recompute_elementwise(false);
}

TEST_CASE("safetensors round trip and damaged files are named", "[model]") {
  testing::TempDir dir;
  checkpoint::TensorMap m{{"a", torch::randn({3, 4})}, {"b", torch::arange(5, torch::kLong)},
                          {"c", torch::randn({2}).to(torch::kBFloat16)}};
  checkpoint::write_safetensors(dir.file("x.safetensors"), m, {{"format", "pt"}});
  auto back = checkpoint::read_safetensors(dir.file("x.safetensors"));
  REQUIRE(back.size() == 3);
  for (const auto& [k, v] : m) CHECK(torch::equal(back.at(k), v));
  // Truncate: the reader must name the file and refuse.
  std::filesystem::resize_file(dir.file("x.safetensors"), std::filesystem::file_size(dir.file("x.safetensors")) - 4);
  REQUIRE_THROWS_WITH(checkpoint::read_safetensors(dir.file("x.safetensors")), Catch::Contains("x.safetensors"));
  REQUIRE_THROWS_WITH(checkpoint::read_safetensors(dir.file("missing.safetensors")), Catch::Contains("missing.safetensors"));
}

TEST_CASE("a pipeline stage's model: other units on the meta device, its own initialised as in the whole model",
          "[model]") {
  const auto args = [] {
    auto a = models::llama3::flavor("debugmodel");
    a.vocab_size = 512;
    a.max_seq_len = 64;
    return a;
  }();
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  Llama3Model whole(args, f32);
  whole.init_weights(7);
  Llama3Model stage(args, f32, [](size_t unit) { return unit == 2 || unit == 3; });  // blocks 1 and 2
  stage.init_weights(7);
  const auto want = checkpoint::parameters_of(whole);
  size_t materialised = 0;
  for (const auto& [name, t] : checkpoint::parameters_of(stage)) {
    INFO(name);
    const bool mine = name.starts_with("layers.1.") || name.starts_with("layers.2.");
    CHECK(t.is_meta() == !mine);
    if (!mine) continue;
    ++materialised;
    CHECK(at::equal(t, want.at(name)));
  }
  CHECK(materialised == 18);  // 9 tensors per block
}
