// A stand-in group for measuring one rank of a larger job on one device: `size` ranks of which
// this is rank 0 and every other is a replica of it (the same data, the same calls). Each
// collective gives what it would if every rank held this rank's tensors, by local copies on a
// stream of its own on CUDA (as NCCL's run beside compute). With it one GPU holds exactly one
// FSDP rank's share of an N-rank job (its master, optimizer and gradient shards, the full
// gathered units and activations) and runs that rank's compute: memory and compute of N-GPU
// shapes, measured on one (`troupe_bench step-profile --fsdp-as N`). Not for training: every
// rank's chunk of a parameter is this rank's.
#pragma once
#include "comm/communicator.h"

namespace troupe::comm {

// `device`: the CUDA device index of the tensors, or -1 for CPU tensors.
CommunicatorPtr make_replica_communicator(const std::string& group, int size, int device);

}  // namespace troupe::comm
