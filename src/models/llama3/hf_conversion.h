// Hugging Face LlamaForCausalLM <-> torchtitan parameter names. HF stores the rows of wq and wk
// with each head's rotary pairs split into halves (rotate_half) where Meta/torchtitan
// interleave them, so those two are permuted on the way.
#pragma once
#include "checkpoint/safetensors.h"
#include "models/llama3/model_args.h"

namespace troupe::models::llama3 {

// Throws std::runtime_error naming a missing, unexpected or wrongly shaped tensor.
checkpoint::TensorMap from_hf(const checkpoint::TensorMap& hf, const ModelArgs& args);
checkpoint::TensorMap to_hf(const checkpoint::TensorMap& titan, const ModelArgs& args);

}  // namespace troupe::models::llama3
