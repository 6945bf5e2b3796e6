// Every actor answers `status_atom` with an actor_status (the live console asks for it), and
// publishes the same on the process's StatusBoard, which the inspection endpoint reads without
// messaging actors that are busy computing.
#pragma once
#include <caf/all.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace troupe::actors {

using status_atom = caf::atom_constant<caf::atom("status")>;

struct actor_status {
  std::string name;        // "stage[3]", "coordinator", ...
  std::string kind;        // the name without its rank: "stage"
  int64_t node = 0;
  int64_t rank = -1;       // -1: serves the whole process
  std::string state;       // "idle", "computing", "waiting-data", "stopping", "failed", ...
  int64_t step = 0;        // current step (or batches produced, for the loader)
  int64_t micro_batch = 0; // within the step, where the actor knows it
  uint64_t mailbox = 0;    // messages waiting when last seen
  uint64_t handled = 0;    // messages handled so far
  double busy_seconds = 0;  // time spent in busy states since it started
  double age_seconds = 0;   // time since it started (busy % = d busy / d age)
  uint64_t bytes_in_flight = 0;  // batches held, snapshot being written, ...
  std::string last_error;
  std::string detail;      // what only this kind of actor reports (the loader: documents skipped)
  std::string activity;    // what its thread began last, where it reports that: "backward of unit 12"
  double quiet_seconds = 0;  // since its state, micro-batch or activity last moved
  std::string collective;  // a stage's failed, else oldest unfinished, else last collective (FlightRecorder::summary)
  std::vector<std::string> recent_messages;  // the last few handled, "seconds-ago: (atom, ...)"
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, actor_status& x) {
  return f(caf::meta::type_name("actor_status"), x.name, x.kind, x.node, x.rank, x.state, x.step, x.micro_batch,
           x.mailbox, x.handled, x.busy_seconds, x.age_seconds, x.bytes_in_flight, x.last_error, x.detail, x.activity, x.quiet_seconds,
           x.collective, x.recent_messages);
}

}  // namespace troupe::actors
