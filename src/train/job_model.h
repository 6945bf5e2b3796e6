// The model a job trains: [model]'s family, flavor and dimension keys, the vocabulary sized by
// the tokenizer; with an empty model.flavor, the dimensions recorded in the checkpoint the job
// loads (a seed made by `troupe checkpoint import --hf` needs no flavor).
#pragma once
#include <cstdint>

#include "checkpoint/checkpoint_metadata.h"
#include "config/job_agreement.h"
#include "config/job_config.h"
#include "models/architecture.h"

namespace troupe::train {

// Throws config::ConfigError naming the key (and where it was set) for a bad family, flavor or
// dimension.
models::ArchitecturePtr job_model(const config::JobConfig& cfg, int64_t tokenizer_vocab);
// The same, loading the tokenizer to size the vocabulary.
models::ArchitecturePtr job_model(const config::JobConfig& cfg);

// The model a checkpoint holds: its recorded dimensions, or (checkpoints from before they were
// recorded) its flavor and vocabulary.
models::ArchitecturePtr checkpoint_model(const checkpoint::ModelEntry& recorded);

// The first dimension in which two models differ ("model.n_layers is 16 in A, 28 in B"), or
// their families; empty when they are the same model.
std::string model_difference(const models::Architecture& a, const std::string& a_name, const models::Architecture& b,
                             const std::string& b_name);

// What the nodes of a job compare at rendezvous: the shared keys and the model as built (its
// vocabulary comes from each node's own tokenizer file), as "model (built).<dimension>".
config::KeyValues job_fingerprint(const config::JobConfig& cfg, const models::Architecture& model);

}  // namespace troupe::train
