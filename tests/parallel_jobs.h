// Jobs that run the debug model under several parallel layouts (data parallel, pipeline) on the
// same global batches, and the checks that two layouts trained alike. Shared by the CPU tests
// (Gloo) and the GPU tests (NCCL).
#pragma once
#include <cstdint>
#include <map>
#include <string>

#include "checkpoint/safetensors.h"
#include "test_support.h"

namespace troupe::testing {

// 20 steps of the debug model on pre-tokenized windows, on the CPU: every data-parallel layout
// sees the same global batch of 4 windows per step (rank r of d takes windows r, r+d, ...).
// Checkpoints every 10 steps; step 20 saves the model alone in fp32.
config::JobConfig dp_job(const TempDir& dir, const std::string& tokens, int ranks, int64_t replicate,
                         const std::string& name);
// dp_job with a pipeline: `pp` stages over `ranks` ranks, 10 steps of the debug model with 8 blocks,
// each data-parallel rank's local batch cut into micro-batches of one row, validation at 5 and 10.
config::JobConfig pp_job(const TempDir& dir, const std::string& tokens, int ranks, int pp, const std::string& schedule,
                         const std::string& name);

// The same job as dp_job, as TOML for the binary, with `local_ranks` ranks on `device`.
std::string job_toml(const TempDir& dir, const std::string& tokens, int local_ranks, const std::string& dump, int steps,
                     int timeout_seconds, int inspect_port = 0, const std::string& device = "cpu");

// A token past the vocabulary in rank 1's data, a few steps in: `troupe train` of 2 ranks on
// `device` must exit 1 within the collective timeout, naming the file and the position.
void check_damaged_token_ends_job(const std::string& device);

// `c` validating on `tokens` after steps 5 and 10, 2 batches each (check_same_validation).
config::JobConfig with_validation(config::JobConfig c, const std::string& tokens);
// The corpus slice (or the text file `corpus`) tokenized into dir/tokens (its path).
std::string prepare_tokens(const TempDir& dir, const std::string& corpus = "");
// A corpus of short documents (the clauses of the first verses), so that 32-token windows hold
// several and documents cross the chunks that context parallelism cuts: its path.
std::string short_documents(const TempDir& dir);
// The model tensors of the run's last checkpoint, whole.
checkpoint::TensorMap final_model(const config::JobConfig& c);
// step -> validation loss, from the run's metrics.jsonl.
std::map<int64_t, double> validation_losses(const config::JobConfig& c);

// Relative bounds: fp32 reductions in another order on the CPU by default.
struct Tolerance {
  double loss = 2e-5;
  double grad_norm = 2e-4;
  double params = 1e-4;
};

// `got` logged the same steps as `want` from `first_step` on: losses, grad norms, tokens.
void check_same_run(const actors::TrainOutcome& got, const actors::TrainOutcome& want, int64_t first_step = 1,
                    const Tolerance& tol = {});
void check_same_model(const checkpoint::TensorMap& got, const checkpoint::TensorMap& want, const Tolerance& tol = {});
void check_same_validation(const config::JobConfig& got, const config::JobConfig& want, const Tolerance& tol = {});

}  // namespace troupe::testing
