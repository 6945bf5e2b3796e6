// DeepSeek V3 (and V2-style 16B/236B as torchtitan's flavors): multi-head latent attention with
// YaRN-scaled rotary parts, dense feed-forward in the first n_dense_layers blocks, then mixtures
// of routed and shared experts with (group-limited) top-k routing and auxiliary-loss-free
// balancing. Hugging Face: DeepseekV3ForCausalLM (sigmoid routing only).
#pragma once
#include "models/architecture.h"

namespace troupe::models::deepseek_v3 {

ModelSpec spec();

}  // namespace troupe::models::deepseek_v3
