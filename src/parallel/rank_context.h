// Who a rank is: its place in the job and how to reach the others. The node supervisor makes
// one per local rank; a Trainer builds its communicators from it.
#pragma once
#include <memory>

#include "comm/flight_recorder.h"
#include "comm/rendezvous.h"

namespace troupe::parallel {

struct RankContext {
  int rank = 0;        // global
  int local_rank = 0;  // on this node: its GPU index
  int world = 1;
  std::shared_ptr<comm::Rendezvous> rendezvous;  // null when world == 1
  // A lone rank that still shards its model, as rank 0 of a dp_shard group of this many (0: it
  // does not): 1 is a real one-rank group (needs a rendezvous), what FSDP itself costs on one GPU
  // (its casts, copies and collectives); N > 1 has replicas of this rank stand in for the others
  // (comm/replica_communicator.h), one rank of an N-GPU job's memory and compute on one GPU.
  int shard_alone_as = 0;
  std::shared_ptr<comm::FlightRecorder> flight_recorder;  // its communicators' operations; may be null
};

}  // namespace troupe::parallel
