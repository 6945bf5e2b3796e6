// What a failed job's flight records say when read side by side (`troupe comm-traces DIR`): for
// each group, how far each rank got, which ranks the others wait for, and the first operation
// number where ranks issued different collectives (a program-order bug: the ranks would hang).
#pragma once
#include <string>

namespace troupe::comm {

// Reads every *.json record in `folder` (comm/flight_recorder.h's format). std::runtime_error
// names a folder without records or a file that is not one.
std::string flight_record_report(const std::string& folder);

}  // namespace troupe::comm
