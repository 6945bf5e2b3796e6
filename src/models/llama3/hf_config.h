// Hugging Face's config.json for LlamaForCausalLM, written from ModelArgs and checked against
// them, so that an exported folder loads with `transformers` and an imported one fits the model.
#pragma once
#include <nlohmann/json_fwd.hpp>

#include <string>

#include "models/llama3/model_args.h"

namespace troupe::models::llama3 {

// `torch_dtype`: "float32" | "bfloat16" | "float16", the dtype of the exported weights.
nlohmann::json hf_config(const ModelArgs& args, const std::string& torch_dtype);

// Throws naming `path` and the first field that disagrees with `args`.
void check_hf_config(const nlohmann::json& config, const ModelArgs& args, const std::string& path);

}  // namespace troupe::models::llama3
