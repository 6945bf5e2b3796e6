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
  // A lone rank that still shards its model over a real one-rank dp_shard group (needs a
  // rendezvous): what FSDP itself costs on one GPU (its casts, copies and collectives).
  bool shard_alone = false;
  std::shared_ptr<comm::FlightRecorder> flight_recorder;  // its communicators' operations; may be null
  // World > 1 and no other rank: replicas of this one stand in for the others in every group
  // (comm/replica_communicator.h), so one GPU holds and computes one rank's share of a
  // `world`-rank layout (FSDP, context and tensor parallelism; not a pipeline, whose stages'
  // transfers replicas cannot make).
  bool replicas = false;
};

}  // namespace troupe::parallel
