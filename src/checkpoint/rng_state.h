// The states of torch's default generators (CPU, and each GPU when present), so that a resumed
// run draws the same random numbers as an uninterrupted one.
#pragma once
#include <map>
#include <string>

namespace troupe::checkpoint {

// Generator name ("cpu", "cuda:0", ...) -> state bytes in hex.
std::map<std::string, std::string> capture_rng();
// Sets every generator named in `states`; `where` names the source in errors.
void restore_rng(const std::map<std::string, std::string>& states, const std::string& where);

}  // namespace troupe::checkpoint
