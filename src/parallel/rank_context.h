// Who a rank is: its place in the job and how to reach the others. The node supervisor makes
// one per local rank; a Trainer builds its communicators from it.
#pragma once
#include <memory>

#include "comm/rendezvous.h"

namespace troupe::parallel {

struct RankContext {
  int rank = 0;        // global
  int local_rank = 0;  // on this node: its GPU index
  int world = 1;
  std::shared_ptr<comm::Rendezvous> rendezvous;  // null when world == 1
  // A lone rank still shards its model, over a one-rank dp_shard group (needs a rendezvous): how a
  // benchmark measures on one GPU what FSDP itself costs (its casts, copies and collectives).
  bool shard_alone = false;
};

}  // namespace troupe::parallel
