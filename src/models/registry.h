// Every model family Troupe builds, listed in registry.cpp (one line a family).
#pragma once
#include <string>
#include <vector>

#include "models/architecture.h"

namespace troupe::models {

const std::vector<ModelSpec>& model_specs();
// Throws std::invalid_argument listing the known families.
const ModelSpec& model_spec(const std::string& name);

// The model a job trains: `flavor`'s dimensions and `overrides`, with the vocabulary sized by
// the tokenizer (`tokenizer_vocab`, rounded up to a multiple of 128) unless vocab_size is
// overridden, which must then hold it.
ArchitecturePtr configure_model(const std::string& name, const std::string& flavor, Dimensions overrides,
                                int64_t tokenizer_vocab);

}  // namespace troupe::models
