// What the nodes of one job must agree on, and how a disagreement reads (checked at rendezvous).
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "config/job_config.h"

namespace troupe::config {

using KeyValues = std::vector<std::pair<std::string, std::string>>;

// Every key of `cfg` as key_values gives it, but the node-local ones: the paths a node reads and
// writes, its inspection endpoint, how long it waits for the others at start-up. The rest
// decides what is trained and how the ranks talk, so every node must hold the same.
KeyValues shared_key_values(const JobConfig& cfg);

// Empty when `a` and `b` hold the same keys with the same values; otherwise one line naming each
// key that differs (at most eight, then how many more) with its value on either side.
std::string disagreement(const KeyValues& a, const std::string& a_name, const KeyValues& b, const std::string& b_name);

// For the wire: key, value, key, value...
std::vector<std::string> flatten(const KeyValues& kv);
KeyValues unflatten(const std::vector<std::string>& flat);

}  // namespace troupe::config
