// Qwen3 dense models (Qwen3ForCausalLM): the family's registration. A Llama-style decoder with
// RMSNorm on each head's q and k before the rotary embedding, head_dim independent of
// dim / n_heads, rope theta 1e6, a 151,936-token vocabulary, and tied embeddings in the
// smaller published models.
#pragma once
#include "models/architecture.h"

namespace troupe::models::qwen3 {

ModelSpec spec();

}  // namespace troupe::models::qwen3
