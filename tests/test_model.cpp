// The model families through their registry: parameter counts, [model] dimension keys,
// agreement with Hugging Face transformers (Llama and Qwen3), gradients.
#include <catch2/catch.hpp>
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <fstream>
#include <set>

#include "checkpoint/module_state.h"
#include "checkpoint/safetensors.h"
#include "models/common/decoder_architecture.h"
#include "models/common/moe.h"
#include "models/model.h"
#include "models/registry.h"
#include "test_support.h"
#include "parallel/unit_executor.h"

using namespace troupe;

namespace {

models::ArchitecturePtr arch(const std::string& family, const std::string& flavor, const models::Dimensions& dims = {}) {
  return models::model_spec(family).configure(flavor, dims);
}

const models::DecoderArgs& decoder(const models::ArchitecturePtr& a) {
  return dynamic_cast<const models::DecoderArchitecture&>(*a).args();
}

int64_t count_on_meta(const models::Architecture& a) {
  auto model = a.build(at::TensorOptions().device(at::kMeta).dtype(at::kFloat), 64);
  int64_t n = 0;
  for (const auto& p : model->parameters()) n += p.numel();
  return n;
}

}  // namespace

TEST_CASE("published parameter counts per flavor", "[model]") {
  // Published totals (Meta's model cards / torchtitan); analytic and built-on-meta must agree.
  const std::vector<std::pair<std::string, int64_t>> expected{
      {"debugmodel", 6'163'712}, {"1B", 1'235'814'400},  {"1.5B", 1'498'482'688},
      {"3B", 3'212'749'824},     {"8B", 8'030'261'248},  {"70B", 70'553'706'496}, {"405B", 405'853'388'800}};
  for (const auto& [name, count] : expected) {
    INFO(name);
    const auto a = arch("llama3", name);
    CHECK(a->num_params() == count);
    CHECK(count_on_meta(*a) == count);
  }
  // Qwen3's published sizes (tied below 8B) and the non-embedding count MFU uses.
  CHECK(arch("qwen3", "1.7B")->num_params() == 1'720'574'976);
  CHECK(arch("qwen3", "1.7B")->num_non_embedding_params() == 1'720'574'976 - 151'936LL * 2048);
  for (const auto& spec : models::model_specs())
    for (const auto& flavor : spec.flavors) {
      INFO(spec.name << " " << flavor);
      const auto a = spec.configure(flavor, {});
      if (a->num_params() < 5'000'000'000) CHECK(count_on_meta(*a) == a->num_params());
    }
}

TEST_CASE("every flavor of every family has the parameter count transformers gives its config", "[oracle]") {
  testing::TempDir dir;
  nlohmann::json configs = nlohmann::json::array();
  std::vector<std::pair<std::string, int64_t>> ours;
  for (const auto& spec : models::model_specs())
    for (const auto& flavor : spec.flavors) {
      const auto a = spec.configure(flavor, {});
      auto c = a->hf_config("float32", 4096);
      c["family"] = spec.hf_model_type;
      for (const char* drop : {"architectures", "model_type", "torch_dtype", "dtype", "rope_scaling"}) c.erase(drop);
      configs.push_back(c);
      ours.emplace_back(spec.name + " " + flavor, a->num_params());
    }
  std::ofstream(dir.file("configs.json")) << configs.dump();
  const auto out = testing::run_command_output("python3 " + testing::source_dir() + "/tests/oracle/hf_decoder_oracle.py count " +
                                               dir.file("configs.json"));
  std::istringstream lines(out);
  for (const auto& [name, n] : ours) {
    INFO(name);
    int64_t theirs = -1;
    lines >> theirs;
    CHECK(theirs == n);
  }
}

TEST_CASE("model dimensions: flavors, [model] keys over them, and what is refused", "[model]") {
  // n_layers over a flavor: the 8B less 16 blocks of 218,112,000, the 1.5B less 14 of 60,821,504.
  CHECK(arch("llama3", "8B", {{"n_layers", "16"}})->num_params() == 4'540'469'248);
  CHECK(arch("llama3", "1.5B", {{"n_layers", "2"}})->num_params() == 646'981'632);
  const auto q = arch("qwen3", "8B", {{"n_layers", "4"}, {"tie_embeddings", "true"}, {"head_dim", "64"}});
  CHECK(q->n_blocks() == 4);
  CHECK(q->tie_embeddings());
  CHECK(decoder(q).head_dim == 64);
  CHECK(decoder(q).qk_norm);
  // The recorded dimensions rebuild the model exactly, over any flavor.
  for (const auto& family : {"llama3", "qwen3"}) {
    const auto a = arch(family, "debugmodel", {{"n_layers", "3"}, {"vocab_size", "300"}});
    const auto back = arch(family, models::model_spec(family).flavors.back(), a->dimensions());
    CHECK(back->dimensions() == a->dimensions());
    CHECK(back->num_params() == a->num_params());
  }
  CHECK_THROWS_WITH(arch("llama3", "7B"), Catch::Contains("7B") && Catch::Contains("debugmodel") && Catch::Contains("405B"));
  CHECK_THROWS_WITH(arch("qwen3", "7B"), Catch::Contains("qwen3") && Catch::Contains("1.7B") && Catch::Contains("32B"));
  CHECK_THROWS_WITH(arch("qwen3", "1.7B", {{"multiple_of", "256"}}),
                    Catch::Contains("model.multiple_of: not a dimension of qwen3") && Catch::Contains("head_dim"));
  CHECK_THROWS_WITH(arch("llama3", "8B", {{"n_layers", "sixteen"}}),
                    Catch::Contains("model.n_layers must be an integer, got 'sixteen'"));
  CHECK_THROWS_WITH(arch("llama3", "8B", {{"n_kv_heads", "5"}}), Catch::Contains("n_kv_heads"));
  CHECK_THROWS_WITH(arch("qwen3", "8B", {{"head_dim", "63"}}), Catch::Contains("model.head_dim must be even"));
  CHECK_THROWS_WITH(models::model_spec("gpt2"), Catch::Contains("gpt2") && Catch::Contains("llama3, qwen3"));
  CHECK_THROWS_WITH(models::configure_model("qwen3", "debugmodel", {{"vocab_size", "100"}}, 2048),
                    Catch::Contains("model.vocab_size 100 is smaller than the tokenizer's 2048"));
  // The tokenizer's vocabulary, rounded up to a multiple of 128 rows (aligned GEMMs).
  CHECK(models::configure_model("qwen3", "debugmodel", {}, 777)->vocab_size() == 896);
  CHECK(models::configure_model("llama3", "debugmodel", {}, 2048)->vocab_size() == 2048);
  CHECK(models::configure_model("qwen3", "1.7B", {}, 151'669)->vocab_size() == 151'680);
}

namespace {

void compare_with_hf(const models::ArchitecturePtr& model_arch, const std::string& family_flag, int64_t batch, int64_t seq) {
  testing::TempDir dir;
  const auto& a = decoder(model_arch);
  std::string flags = " --family " + family_flag + " --head_dim " + std::to_string(a.head_dim);
  if (a.rope_scaling_factor > 0)
    flags += " --rope_factor " + std::to_string(a.rope_scaling_factor) + " --low_freq_factor " +
             std::to_string(a.rope_low_freq_factor) + " --high_freq_factor " + std::to_string(a.rope_high_freq_factor) +
             " --original_max_pos " + std::to_string(a.rope_original_max_positions);
  if (a.tie_embeddings) flags += " --tied";
  if (a.num_experts > 0) {
    flags += " --experts " + std::to_string(a.num_experts) + " --top_k " + std::to_string(a.top_k) + " --moe_inter " +
             std::to_string(a.moe_inter_dim) + " --sparse_step " + std::to_string(a.moe_every) + " --dense_layers " +
             std::to_string(a.n_dense_layers) + " --aux_coef " + std::to_string(a.aux_loss_coeff);
    if (a.route_norm) flags += " --norm_topk";
  }
  if (a.mla()) {
    char yarn[160];
    std::snprintf(yarn, sizeof yarn, " --route_scale %.17g --yarn_factor %.17g --yarn_mscale %.17g --original_max_pos %lld",
                  a.route_scale, a.rope_yarn_factor, a.rope_mscale, static_cast<long long>(a.rope_original_max_positions));
    flags += " --q_lora " + std::to_string(a.q_lora_rank) + " --kv_lora " + std::to_string(a.kv_lora_rank) + " --nope " +
             std::to_string(a.qk_nope_head_dim) + " --rope_dim " + std::to_string(a.qk_rope_head_dim) + " --v_dim " +
             std::to_string(a.v_head_dim) + " --shared " + std::to_string(a.num_shared_experts) + " --n_group " +
             std::to_string(a.n_expert_groups) + " --topk_group " + std::to_string(a.n_limited_groups) + yarn;
  }
  const auto cmd = "python3 " + testing::source_dir() + "/tests/oracle/hf_decoder_oracle.py run " + dir.path().string() +
                   " --dim " + std::to_string(a.dim) + " --layers " + std::to_string(a.n_layers) + " --heads " +
                   std::to_string(a.n_heads) + " --kv_heads " + std::to_string(a.n_kv_heads) + " --ffn " +
                   std::to_string(a.ffn_hidden_dim) + " --vocab " + std::to_string(a.vocab_size) + " --batch " +
                   std::to_string(batch) + " --seq " + std::to_string(seq) + " --rope_theta " +
                   std::to_string(a.rope_theta) + " --norm_eps " + std::to_string(a.norm_eps) + flags;
  REQUIRE(testing::run_command(cmd) == 0);
  auto hf = checkpoint::read_safetensors(dir.file("hf_model.safetensors"));
  auto io = checkpoint::read_safetensors(dir.file("batch.safetensors"));
  std::ifstream loss_file(dir.file("loss.json"));
  const auto hf_losses = nlohmann::json::parse(loss_file);
  const double hf_loss = hf_losses["loss"].get<double>();

  auto model = model_arch->build(at::TensorOptions().dtype(at::kFloat), seq);
  checkpoint::load_parameters(*model, model_arch->from_hf(hf));
  torch::NoGradGuard no_grad;
  const auto logits = model->logits(io.at("tokens"));
  models::AuxValues aux;
  const auto loss = model->loss({io.at("tokens"), io.at("targets"), {}, &aux}).item<double>();
  CHECK(testing::relative_error(logits, io.at("logits")) < 1e-5);
  CHECK(std::abs(loss - hf_loss) / hf_loss < 1e-5);
  if (a.num_experts > 0) {
    // Every token reached top_k experts in every MoE block.
    for (int64_t i = 0; i < a.n_layers; ++i) {
      const auto name = "moe.layers." + std::to_string(i) + ".tokens_per_expert";
      CHECK(aux.values().contains(name) == a.moe_block(i));
      if (a.moe_block(i)) CHECK(aux.values().at(name).sum().item<double>() == double(batch * seq * a.top_k));
    }
  }
  // HF's load-balancing loss pools its layers; with one MoE block it is that block's.
  if (a.aux_loss_coeff > 0 && a.moe_blocks() == 1) {
    double ours = 0;
    for (const auto& [name, v] : aux.values())
      if (name.ends_with(".aux_loss")) ours += v.item<double>();
    const double hf_aux = hf_losses["aux_loss"].get<double>();
    CHECK(ours == Approx(hf_aux).epsilon(1e-5));
  }
  // And back: exporting our parameters under HF names reproduces HF's tensors exactly.
  auto round_trip = model_arch->to_hf(checkpoint::parameters_of(*model));
  CHECK(round_trip.size() == hf.size());
  for (const auto& [name, t] : round_trip) CHECK(torch::equal(t, hf.at(name)));
}

}  // namespace

TEST_CASE("debug flavor matches Hugging Face LlamaForCausalLM", "[oracle]") {
  compare_with_hf(arch("llama3", "debugmodel"), "llama", 2, 64);
}

TEST_CASE("Llama 3.1 rope scaling, GQA and tied embeddings match Hugging Face", "[oracle]") {
  compare_with_hf(arch("llama3", "debugmodel",
                       {{"dim", "128"}, {"n_layers", "2"}, {"n_heads", "4"}, {"n_kv_heads", "2"}, {"vocab_size", "300"},
                        {"multiple_of", "64"}, {"ffn_dim_multiplier", "1.3"}, {"rope_scaling_factor", "8"},
                        {"tie_embeddings", "true"}}),
                  "llama", 3, 48);
}

TEST_CASE("Qwen3's debug flavor matches Hugging Face Qwen3ForCausalLM", "[oracle]") {
  compare_with_hf(arch("qwen3", "debugmodel"), "qwen3", 2, 64);
}

TEST_CASE("Qwen3 with tied embeddings and head_dim != dim / n_heads matches Hugging Face", "[oracle]") {
  compare_with_hf(arch("qwen3", "debugmodel",
                       {{"dim", "96"}, {"n_layers", "2"}, {"n_heads", "4"}, {"n_kv_heads", "2"}, {"head_dim", "40"},
                        {"ffn_hidden_dim", "160"}, {"vocab_size", "300"}, {"tie_embeddings", "true"}}),
                  "qwen3", 3, 40);
}

TEST_CASE("DeepSeek V3 matches Hugging Face DeepseekV3ForCausalLM: latent attention, YaRN, shared experts, groups",
          "[oracle]") {
  // A dense first block, then a MoE block: sigmoid scores in 4 groups of which 2 are eligible,
  // renormalised and scaled by 2.5, one shared expert; q projected directly, then through its
  // latent; YaRN over a 64-position original context.
  for (const std::string q_lora : {"0", "48"}) {
    INFO("q_lora_rank " << q_lora);
    compare_with_hf(arch("deepseek_v3", "debugmodel",
                         {{"dim", "64"}, {"n_layers", "2"}, {"n_heads", "4"}, {"ffn_hidden_dim", "96"},
                          {"moe_inter_dim", "32"}, {"num_experts", "8"}, {"top_k", "2"}, {"num_shared_experts", "1"},
                          {"q_lora_rank", q_lora}, {"kv_lora_rank", "32"}, {"qk_nope_head_dim", "32"},
                          {"qk_rope_head_dim", "16"}, {"v_head_dim", "24"}, {"sigmoid_scores", "true"},
                          {"route_norm", "true"}, {"route_scale", "2.5"}, {"n_expert_groups", "4"},
                          {"n_limited_groups", "2"}, {"vocab_size", "300"}, {"rope_original_max_positions", "64"},
                          {"rope_mscale", "1.0"}}),
                    "deepseek_v3", 2, 24);
  }
}

TEST_CASE("Qwen3 MoE matches Hugging Face Qwen3MoeForCausalLM: routing, experts, a dense first layer, aux loss",
          "[oracle]") {
  // One dense block, then one MoE block of 8 experts, top 2, renormalised: its load-balancing
  // loss is HF's.
  compare_with_hf(arch("qwen3_moe", "debugmodel",
                       {{"dim", "64"}, {"n_layers", "2"}, {"n_heads", "4"}, {"n_kv_heads", "2"}, {"head_dim", "16"},
                        {"ffn_hidden_dim", "96"}, {"moe_inter_dim", "32"}, {"vocab_size", "300"},
                        {"n_dense_layers", "1"}}),
                  "qwen3_moe", 2, 24);
  // Every block MoE, top 3 of 6 without renormalising, tied embeddings.
  compare_with_hf(arch("qwen3_moe", "debugmodel",
                       {{"dim", "48"}, {"n_layers", "2"}, {"n_heads", "4"}, {"n_kv_heads", "2"}, {"head_dim", "16"},
                        {"num_experts", "6"}, {"top_k", "3"}, {"moe_inter_dim", "40"}, {"route_norm", "false"},
                        {"vocab_size", "300"}, {"tie_embeddings", "true"}}),
                  "qwen3_moe", 2, 20);
}

namespace {

// Both families, tiny, with every kind of parameter (Llama's rope scaling, Qwen3's q/k norms
// and a head_dim of its own).
std::shared_ptr<models::Model> tiny_model(const std::string& family, at::ScalarType dtype) {
  const auto a = family == "llama3"
                     ? arch("llama3", "debugmodel",
                            {{"dim", "16"}, {"n_layers", "2"}, {"n_heads", "4"}, {"n_kv_heads", "2"}, {"vocab_size", "24"},
                             {"multiple_of", "8"}, {"rope_scaling_factor", "8"}, {"rope_original_max_positions", "16"}})
                     : arch("qwen3", "debugmodel",
                            {{"dim", "16"}, {"n_layers", "2"}, {"n_heads", "4"}, {"n_kv_heads", "2"}, {"head_dim", "6"},
                             {"ffn_hidden_dim", "24"}, {"vocab_size", "24"}});
  auto m = a->build(at::TensorOptions().dtype(dtype), 5);
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
  const std::string family = GENERATE(as<std::string>{}, "llama3", "qwen3");
  INFO(family);
  auto model = tiny_model(family, at::kDouble);
  const auto batch = tiny_batch();
  const auto& units = model->units();
  for (bool recompute : {false, true}) {
    parallel::UnitExecutor exec(units, std::vector<bool>(units.size(), recompute));
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
  const std::string family = GENERATE(as<std::string>{}, "llama3", "qwen3");
  INFO(family);
  auto model = tiny_model(family, at::kDouble);
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
    parallel::UnitExecutor exec(model->units(), parallel::recompute_plan(model->units().size(), unit_mode, 2));
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
  const std::string family = GENERATE(as<std::string>{}, "llama3", "qwen3");
  INFO(family);
  const auto a = arch(family, "debugmodel", {{"vocab_size", "512"}});
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  auto whole = a->build(f32, 64);
  whole->init_weights(7);
  auto stage = a->build(f32, 64, [](size_t unit) { return unit == 2 || unit == 3; });  // blocks 1 and 2
  stage->init_weights(7);
  const auto want = checkpoint::parameters_of(*whole);
  size_t materialised = 0;
  for (const auto& [name, t] : checkpoint::parameters_of(*stage)) {
    INFO(name);
    const bool mine = name.starts_with("layers.1.") || name.starts_with("layers.2.");
    CHECK(t.is_meta() == !mine);
    if (!mine) continue;
    ++materialised;
    CHECK(at::equal(t, want.at(name)));
  }
  CHECK(materialised == (family == "qwen3" ? 22 : 18));  // 9 tensors per block, and Qwen3's q and k norms
}

TEST_CASE("units read token positions: rotary attention depends only on their differences", "[model]") {
  // Context parallelism hands a rank a slice of each sequence with its positions; a shift of
  // every position leaves a rotary model's loss unchanged, a permuted one does not.
  for (const std::string family : {"llama3", "qwen3"}) {
    INFO(family);
    const auto a = arch(family, "debugmodel", {{"n_layers", "2"}, {"vocab_size", "64"}});
    auto model = a->build(at::TensorOptions().dtype(at::kDouble), 64);
    model->init_weights(5);
    torch::manual_seed(1);
    const auto tokens = torch::randint(0, 64, {2, 16}, torch::kLong), targets = torch::randint(0, 64, {2, 16}, torch::kLong);
    torch::NoGradGuard no_grad;
    const double plain = model->loss({tokens, targets}).item<double>();
    const double from_zero = model->loss({tokens, targets, torch::arange(16, torch::kLong)}).item<double>();
    const double shifted = model->loss({tokens, targets, torch::arange(16, torch::kLong) + 40}).item<double>();
    const double reversed = model->loss({tokens, targets, torch::arange(15, -1, -1, torch::kLong)}).item<double>();
    CHECK(from_zero == plain);
    CHECK(std::abs(shifted - plain) < 1e-10 * plain);
    CHECK(std::abs(reversed - plain) > 1e-6 * plain);
  }
}

namespace {

// A unit that reports its input's mean on the side channel, as a mixture of experts reports
// its load.
class ReportingUnit : public models::Unit {
 public:
  ReportingUnit() : weight(register_parameter("weight", torch::ones({4}, torch::kDouble))) {}
  at::Tensor forward(const at::Tensor& x, const models::UnitBatch& batch) override {
    auto in = x.defined() ? x : batch.tokens.to(torch::kDouble).unsqueeze(-1).expand({-1, -1, 4});
    if (batch.aux) batch.aux->add("input_mean", in.mean());
    auto out = in * weight;
    return batch.targets.defined() && x.defined() ? out.sum() : out;
  }
  at::Tensor weight;
};

}  // namespace

TEST_CASE("units report auxiliary values on the step's side channel, once per forward even when recomputed", "[model]") {
  std::vector<models::UnitPtr> units{std::make_shared<ReportingUnit>(), std::make_shared<ReportingUnit>()};
  models::AuxValues aux;
  const models::UnitBatch batch{.tokens = torch::full({1, 2}, 3, torch::kLong), .targets = torch::zeros({1, 2}, torch::kLong), .aux = &aux};
  for (bool recompute : {false, true}) {
    INFO(recompute);
    aux.clear();
    parallel::UnitExecutor exec(units, {recompute, recompute});
    exec.forward(batch);
    exec.backward(1.0);
    REQUIRE(aux.values().size() == 1);
    CHECK(aux.values().at("input_mean").item<double>() == 6.0);  // 3 from each unit's forward, none from recomputes
  }
  // Without a channel, units report nowhere.
  parallel::UnitExecutor exec(units, {false, false});
  aux.clear();
  exec.forward({batch.tokens, batch.targets});
  CHECK(aux.values().empty());
}

TEST_CASE("a MoE block's gradients, the load-balancing loss's included, are its finite differences in fp64",
          "[model]") {
  // Every routing feature at once: sigmoid scores, 4 groups of which 2 are eligible, a bias in the
  // choice, renormalised and scaled weights, a shared expert, and the auxiliary loss.
  models::DecoderArgs a;
  a.dim = 16;
  a.n_layers = 1;
  a.num_experts = 8;
  a.top_k = 3;
  a.moe_inter_dim = 12;
  a.num_shared_experts = 1;
  a.sigmoid_scores = true;
  a.route_norm = true;
  a.route_scale = 2.5;
  a.n_expert_groups = 4;
  a.n_limited_groups = 2;
  a.load_balance_coeff = 0.1;
  a.aux_loss_coeff = 0.3;
  a.aux_loss_per_sequence = GENERATE(false, true);
  INFO("aux loss per sequence: " << a.aux_loss_per_sequence);
  torch::manual_seed(3);
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  models::MoE moe(a, f64, nullptr);
  {
    torch::NoGradGuard no_grad;
    for (auto& p : moe.parameters()) p.copy_(at::randn(p.sizes(), f64) * 0.3);
    moe.expert_bias.copy_(at::randn({a.num_experts}, f64.dtype(at::kFloat)) * 0.05);
  }
  auto x = at::randn({2, 5, a.dim}, f64).requires_grad_(true);
  const auto r = at::randn({2, 5, a.dim}, f64);
  auto objective = [&](models::AuxValues& aux) {
    const auto out = moe.forward(x, {{}, {}, {}, &aux}, 0);
    return (out * r).sum();
  };
  models::AuxValues aux;
  objective(aux).backward();
  REQUIRE(aux.values().contains("moe.layers.0.aux_loss"));
  // f = sum(out * r) + coeff * aux: the value the backward differentiated.
  auto value = [&] {
    torch::NoGradGuard no_grad;
    models::AuxValues probe;
    const double main = objective(probe).item<double>();
    return main + a.aux_loss_coeff * probe.values().at("moe.layers.0.aux_loss").item<double>();
  };
  std::vector<std::pair<std::string, at::Tensor>> checked = {{"x", x}};
  for (const auto& item : moe.named_parameters()) checked.emplace_back(item.key(), item.value());
  const double h = 1e-6;
  for (auto& [name, t] : checked) {
    INFO(name);
    REQUIRE(t.grad().defined());
    const auto flat = t.detach().view({-1});
    const auto grad = t.grad().view({-1});
    for (int64_t i : {int64_t{0}, flat.numel() / 3, flat.numel() - 1}) {
      const double keep = flat[i].item<double>();
      flat[i] = keep + h;
      const double up = value();
      flat[i] = keep - h;
      const double down = value();
      flat[i] = keep;
      const double numeric = (up - down) / (2 * h);
      CHECK(grad[i].item<double>() == Approx(numeric).epsilon(1e-6).margin(1e-9));
    }
  }
}

TEST_CASE("routing: softmax and sigmoid scores, group limits and the bias choose as written", "[model]") {
  models::DecoderArgs a;
  a.num_experts = 4;
  a.top_k = 2;
  const auto logits = torch::tensor({2.0f, 1.0f, 0.5f, 3.0f}).view({1, 4});
  auto r = models::route(logits, {}, a);
  CHECK(r.experts[0][0].item<int64_t>() == 3);
  CHECK(r.experts[0][1].item<int64_t>() == 0);
  const auto p = at::softmax(logits, -1);
  CHECK(r.weights[0][0].item<float>() == Approx(p[0][3].item<float>()));
  // The bias changes the choice, not the weight: expert 2 now beats expert 0.
  r = models::route(logits, torch::tensor({0.f, 0.f, 2.f, 0.f}), a);
  CHECK(r.experts[0][0].item<int64_t>() == 2);
  CHECK(r.experts[0][1].item<int64_t>() == 3);
  CHECK(r.weights[0][0].item<float>() == Approx(p[0][2].item<float>()));
  // Two groups {0,1} {2,3}, one eligible: group {2,3} has the larger sum of its best two, so
  // expert 0 is out though it is the second best.
  a.n_expert_groups = 2;
  a.n_limited_groups = 1;
  r = models::route(logits, {}, a);
  CHECK(std::set<int64_t>{r.experts[0][0].item<int64_t>(), r.experts[0][1].item<int64_t>()} == std::set<int64_t>{2, 3});
  // Sigmoid, renormalised and scaled: the two weights add up to route_scale.
  a = models::DecoderArgs{};
  a.num_experts = 4;
  a.top_k = 2;
  a.sigmoid_scores = true;
  a.route_norm = true;
  a.route_scale = 2.0;
  r = models::route(logits, {}, a);
  CHECK(r.weights.sum().item<float>() == Approx(2.0));
  // The sequence-wise loss is the mean of each sequence's own.
  torch::manual_seed(2);
  const auto two = torch::randn({2 * 5, 4});
  const auto both = models::route(two, {}, a);
  const double per_sequence = models::load_balancing_loss(both, 4, 2).item<double>();
  const double first = models::load_balancing_loss(models::route(two.narrow(0, 0, 5), {}, a), 4).item<double>();
  const double second = models::load_balancing_loss(models::route(two.narrow(0, 5, 5), {}, a), 4).item<double>();
  CHECK(per_sequence == Approx((first + second) / 2));
  CHECK(models::load_balancing_loss(both, 4).item<double>() != Approx(per_sequence));
}

TEST_CASE("auxiliary-loss-free balancing moves a skewed load towards the mean", "[model]") {
  const auto a = arch("qwen3_moe", "debugmodel", {{"n_layers", "1"}, {"load_balance_coeff", "0.05"}, {"vocab_size", "256"}});
  auto model = a->build(at::TensorOptions().dtype(at::kFloat), 32);
  model->init_weights(7);
  {
    // A bias far off balance: expert 0 is every token's choice.
    torch::NoGradGuard no_grad;
    for (const auto& item : model->named_buffers())
      if (item.key() == "layers.0.moe.expert_bias") item.value()[0].fill_(1.0);
  }
  torch::manual_seed(5);
  const auto tokens = at::randint(0, 256, {4, 32}, at::kLong);
  auto load = [&] {
    torch::NoGradGuard no_grad;
    models::AuxValues aux;
    model->loss({tokens, tokens, {}, &aux});
    return aux;
  };
  auto first = load();
  const auto& counts = first.values().at("moe.layers.0.tokens_per_expert");
  const double start = counts.max().item<double>();
  REQUIRE(start > 2 * counts.mean().item<double>());  // skewed indeed
  REQUIRE(model->balances_experts());
  auto step = first;
  for (int i = 0; i < 60; ++i) {
    model->balance_experts(step);
    step = load();
  }
  const auto& last = step.values().at("moe.layers.0.tokens_per_expert");
  INFO("busiest expert: " << start << " tokens at first, " << last.max().item<double>() << " after");
  CHECK(last.max().item<double>() < 0.6 * start);
  CHECK(last.sum().item<double>() == counts.sum().item<double>());  // dropless: every choice served
}

TEST_CASE("a MoE model trains alike with no, full and op activation checkpointing, the aux loss included", "[model]") {
  // The recomputed forward of a MoE block adds the load-balancing loss's gradient again (and
  // reports nothing): the three runs are bit for bit the same.
  testing::TempDir dir;
  std::vector<std::vector<std::pair<double, double>>> runs;
  for (const std::string mode : {"none", "full", "selective"}) {
    auto c = testing::small_job_config(dir);
    c.job.dump_folder = dir.file(mode);
    c.model.name = "qwen3_moe";
    c.model.flavor = "debugmodel";
    c.model.dimensions = {{"n_layers", "2", "test"}, {"aux_loss_coeff", "0.01", "test"}, {"load_balance_coeff", "0.001", "test"}};
    c.training.steps = 3;
    c.activation_checkpoint.mode = mode;
    c.activation_checkpoint.selective_ac_option = "op";
    const auto out = testing::run_with_timeout(c);
    REQUIRE(out.exit_code == 0);
    std::vector<std::pair<double, double>> steps;
    for (const auto& s : out.steps) steps.emplace_back(s.loss, s.grad_norm);
    runs.push_back(steps);
  }
  CHECK(runs[1] == runs[0]);
  CHECK(runs[2] == runs[0]);
}

TEST_CASE("multi-token prediction adds its weighted mean cross-entropy, differentiates exactly, counts its parameters",
          "[model]") {
  const models::Dimensions small = {{"dim", "32"},          {"n_layers", "2"},        {"n_heads", "2"},
                                    {"ffn_hidden_dim", "48"}, {"moe_inter_dim", "16"}, {"num_experts", "4"},
                                    {"top_k", "2"},         {"kv_lora_rank", "16"},   {"qk_nope_head_dim", "8"},
                                    {"qk_rope_head_dim", "8"}, {"v_head_dim", "8"},    {"vocab_size", "64"},
                                    {"mtp_layers", "2"}};
  auto with_weight = [&](const std::string& w) {
    auto dims = small;
    dims.emplace_back("mtp_loss_weight", w);
    return arch("deepseek_v3", "debugmodel", dims);
  };
  const auto a = with_weight("0.3");
  CHECK(count_on_meta(*a) == a->num_params());
  auto model = a->build(at::TensorOptions().dtype(at::kDouble), 16);
  model->init_weights(4);
  auto unweighted = with_weight("0")->build(at::TensorOptions().dtype(at::kDouble), 16);
  checkpoint::load_parameters(*unweighted, checkpoint::parameters_of(*model));
  torch::manual_seed(9);
  const auto tokens = at::randint(0, 64, {2, 16}, at::kLong), targets = at::randint(0, 64, {2, 16}, at::kLong);
  models::AuxValues aux;
  const auto loss = model->loss({tokens, targets, {}, &aux});
  const double plain = unweighted->loss({tokens, targets}).item<double>();
  REQUIRE(aux.values().contains("mtp.loss"));
  CHECK(loss.item<double>() == Approx(plain + 0.3 * aux.values().at("mtp.loss").item<double>()).epsilon(1e-12));
  // fp64 finite differences on the prediction blocks' own parameters.
  loss.backward();
  std::map<std::string, at::Tensor> params;
  for (const auto& item : model->named_parameters()) params[item.key()] = item.value();
  for (const std::string name : {"mtp_layers.0.eh_proj.weight", "mtp_layers.1.enorm.weight",
                                 "mtp_layers.1.attention.wkv_b.weight", "mtp_layers.0.moe.experts.w2"}) {
    INFO(name);
    REQUIRE(params.count(name) == 1);
    auto flat = params.at(name).detach().view({-1});
    const auto grad = params.at(name).grad().view({-1});
    for (int64_t i : {int64_t{0}, flat.numel() / 2}) {
      const double keep = flat[i].item<double>(), h = 1e-6;
      torch::NoGradGuard no_grad;
      flat[i] = keep + h;
      const double up = model->loss({tokens, targets}).item<double>();
      flat[i] = keep - h;
      const double down = model->loss({tokens, targets}).item<double>();
      flat[i] = keep;
      CHECK(grad[i].item<double>() == Approx((up - down) / (2 * h)).epsilon(1e-5).margin(1e-9));
    }
  }
}
