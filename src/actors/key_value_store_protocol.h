// Any rank -> node 0's key-value store: the rendezvous of the job's communicators over CAF (Gloo
// addresses, the NCCL unique id). Values are bytes in std::string.
#pragma once
#include <caf/all.hpp>

#include <string>
#include <vector>

namespace troupe::actors {

using kv_set_atom = caf::atom_constant<caf::atom("kv_set")>;      // (kv_set_atom, key, value) -> bool
using kv_get_atom = caf::atom_constant<caf::atom("kv_get")>;      // (kv_get_atom, key) -> value, once the key exists
using kv_add_atom = caf::atom_constant<caf::atom("kv_add")>;      // (kv_add_atom, key, int64_t delta) -> int64_t new value
using kv_cas_atom = caf::atom_constant<caf::atom("kv_cas")>;      // (kv_cas_atom, key, expected, desired) -> value now
using kv_check_atom = caf::atom_constant<caf::atom("kv_check")>;  // (kv_check_atom, std::vector<std::string> keys) -> bool
using kv_del_atom = caf::atom_constant<caf::atom("kv_del")>;      // (kv_del_atom, key) -> bool existed
using kv_count_atom = caf::atom_constant<caf::atom("kv_count")>;  // (kv_count_atom) -> int64_t

}  // namespace troupe::actors
