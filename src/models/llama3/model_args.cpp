#include "models/llama3/model_args.h"

#include <map>
#include <stdexcept>

namespace troupe::models::llama3 {

int64_t ModelArgs::ffn_hidden_dim() const {
  // Meta's recipe: 2/3 of 4*dim (SwiGLU has three matrices), scaled, rounded up to multiple_of.
  int64_t hidden = 2 * (4 * dim) / 3;
  if (ffn_dim_multiplier) hidden = static_cast<int64_t>(*ffn_dim_multiplier * static_cast<double>(hidden));
  return multiple_of * ((hidden + multiple_of - 1) / multiple_of);
}

int64_t ModelArgs::num_params() const {
  const int64_t hd = head_dim();
  const int64_t attention = dim * n_heads * hd + 2 * dim * kv_heads() * hd + n_heads * hd * dim;
  const int64_t ffn = 3 * dim * ffn_hidden_dim();
  const int64_t block = attention + ffn + 2 * dim;
  const int64_t embedding = vocab_size * dim;
  const int64_t output = tie_embeddings ? 0 : vocab_size * dim;
  return embedding + n_layers * block + dim + output;
}

int64_t ModelArgs::num_non_embedding_params() const { return num_params() - vocab_size * dim; }

void ModelArgs::validate() const {
  auto require = [](bool ok, const char* what) {
    if (!ok) throw std::invalid_argument(std::string("model args: ") + what);
  };
  require(dim > 0 && n_layers > 0 && n_heads > 0 && vocab_size > 0, "dim, n_layers, n_heads, vocab_size must be positive");
  require(dim % n_heads == 0, "dim must be divisible by n_heads");
  require(head_dim() % 2 == 0, "head_dim must be even for rotary embeddings");
  require(n_heads % kv_heads() == 0, "n_heads must be a multiple of n_kv_heads");
  require(multiple_of > 0, "multiple_of must be positive");
  require(max_seq_len > 0, "max_seq_len must be positive");
}

namespace {

ModelArgs make(int64_t dim, int64_t layers, int64_t heads, int64_t kv_heads, std::optional<double> ffn_mult,
               int64_t multiple_of, std::optional<RopeScaling> scaling, bool tied, int64_t vocab = 128256) {
  ModelArgs a;
  a.dim = dim;
  a.n_layers = layers;
  a.n_heads = heads;
  a.n_kv_heads = kv_heads;
  a.ffn_dim_multiplier = ffn_mult;
  a.multiple_of = multiple_of;
  a.rope_scaling = scaling;
  a.tie_embeddings = tied;
  a.vocab_size = vocab;
  return a;
}

const std::map<std::string, ModelArgs>& registry() {
  // Published dimensions: Llama 3.2 (1B, 3B: tied embeddings, rope factor 32), Llama 3.1 (8B, 70B,
  // 405B: rope factor 8), and torchtitan's debug model sized for a 2048-token tokenizer.
  static const std::map<std::string, ModelArgs> flavors = {
      {"debugmodel", make(256, 6, 16, 0, std::nullopt, 256, std::nullopt, false, 2048)},
      // Deep enough for 8 pipeline stages (4 ranks x 2 virtual stages).
      {"debugmodel_8layers", make(256, 8, 16, 0, std::nullopt, 256, std::nullopt, false, 2048)},
      // The output projection tied to the embedding, as Llama 3.2 1B and 3B.
      {"debugmodel_tied", make(256, 6, 16, 0, std::nullopt, 256, std::nullopt, true, 2048)},
      {"1B", make(2048, 16, 32, 8, 1.5, 256, RopeScaling{32.0, 1.0, 4.0, 8192}, true)},
      // The 1B shapes untied: the model of the shared PyTorch peer benchmark (1.50B parameters).
      {"1.5B", make(2048, 16, 32, 8, 1.5, 256, RopeScaling{32.0, 1.0, 4.0, 8192}, false)},
      // Those shapes with 2 blocks: the GPU tests' large model (big GEMMs, the 128k head).
      {"1.5B_2layers", make(2048, 2, 32, 8, 1.5, 256, RopeScaling{32.0, 1.0, 4.0, 8192}, false)},
      {"3B", make(3072, 28, 24, 8, 1.0, 256, RopeScaling{32.0, 1.0, 4.0, 8192}, true)},
      {"8B", make(4096, 32, 32, 8, 1.3, 1024, RopeScaling{}, false)},
      // The 8B blocks, half as many: issue 5's 8B shapes measured on one GPU, which cannot hold
      // the whole model's optimizer state.
      {"8B_16layers", make(4096, 16, 32, 8, 1.3, 1024, RopeScaling{}, false)},
      {"70B", make(8192, 80, 64, 8, 1.3, 4096, RopeScaling{}, false)},
      {"405B", make(16384, 126, 128, 8, 1.2, 4096, RopeScaling{}, false)},
  };
  return flavors;
}

}  // namespace

ModelArgs flavor(const std::string& name) {
  auto it = registry().find(name);
  if (it == registry().end()) {
    std::string known;
    for (const auto& n : flavor_names()) known += (known.empty() ? "" : ", ") + n;
    throw std::invalid_argument("unknown llama3 flavor '" + name + "' (known: " + known + ")");
  }
  return it->second;
}

std::vector<std::string> flavor_names() {
  return {"debugmodel", "debugmodel_8layers", "debugmodel_tied", "1B", "1.5B", "1.5B_2layers", "3B", "8B", "8B_16layers", "70B", "405B"};
}

}  // namespace troupe::models::llama3
