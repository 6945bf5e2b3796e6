// Llama 3 / 3.1 / 3.2 (LlamaForCausalLM): the family's registration.
#pragma once
#include "models/architecture.h"

namespace troupe::models::llama3 {

ModelSpec spec();

}  // namespace troupe::models::llama3
