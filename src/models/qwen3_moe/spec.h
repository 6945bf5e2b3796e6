// Qwen3 MoE (Qwen3MoeForCausalLM): Qwen3's attention (q/k norms, rope theta 1e6) with a mixture
// of experts in every block: a softmax router choosing top_k of num_experts SwiGLU experts, the
// chosen scores renormalised, no shared experts, and the load-balancing loss
// (router_aux_loss_coef).
#pragma once
#include "models/architecture.h"

namespace troupe::models::qwen3_moe {

ModelSpec spec();

}  // namespace troupe::models::qwen3_moe
