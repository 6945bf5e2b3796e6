// The models::RankGroup the units exchange activations over (tensor and context parallelism),
// over a Communicator of the mesh dimension.
#pragma once
#include "comm/communicator.h"
#include "models/rank_group.h"

namespace troupe::parallel {

models::RankGroupPtr make_rank_group(comm::CommunicatorPtr group);

}  // namespace troupe::parallel
