// Anyone -> node supervisor. The supervisor also receives the coordinator's done_atom and
// every actor's failure_atom (see coordinator_protocol.h and data_loader_protocol.h).
#pragma once
#include <caf/all.hpp>

#include <vector>

#include "actors/coordinator_protocol.h"
#include "actors/data_loader_protocol.h"
#include "actors/status_protocol.h"

namespace troupe::actors {

using children_atom = caf::atom_constant<caf::atom("children")>;  // (children_atom) -> std::vector<caf::actor>

// Between nodes (node 0's supervisor is published at the rendezvous port):
// node R -> node 0, before spawning anything: (rdzv_atom, int node_rank, std::string host,
// std::vector<std::string> fingerprint) -> (caf::actor key_value_store, std::string refusal). The
// fingerprint is train::job_fingerprint flattened; a refusal (not empty) names the keys in which
// the two nodes differ, and node 0 ends the job with it.
using rdzv_atom = caf::atom_constant<caf::atom("rdzv")>;
// (refuse_atom, std::string why): node 0's own timer, ending a job whose nodes disagree once the
// refusal has had time to reach the node that asked
using refuse_atom = caf::atom_constant<caf::atom("refuse")>;
// node R -> node 0, once its ranks exist: (join_atom, int node_rank, std::string host, std::vector<caf::actor> stages,
// std::vector<caf::actor> writers); the coordinator starts once every node has joined
using join_atom = caf::atom_constant<caf::atom("join")>;
// node 0 -> node R when the job ends: (finish_atom, int exit_code, std::string message) -> bool
using finish_atom = caf::atom_constant<caf::atom("finish")>;
// node R -> node 0, every second: (board_atom, int64_t node, std::vector<actor_status>) for the
// inspection endpoint, which shows the whole job from node 0
using board_atom = caf::atom_constant<caf::atom("board")>;
using tick_atom = caf::atom_constant<caf::atom("tick")>;  // (tick_atom): a node's own timer
// (watch_atom): a node's own timer, looking for a stage of this node that is stuck inside a step
using watch_atom = caf::atom_constant<caf::atom("watch")>;

}  // namespace troupe::actors
