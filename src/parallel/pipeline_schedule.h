// Pipeline schedules as data (DESIGN §4): a pure function from (schedule, ranks, micro-batches,
// virtual stages) to each rank's ordered list of actions: compute (F, B, or B split into I and
// W for the zero-bubble schedules) and the point-to-point transfers between them. Stage actors
// run the lists; the checker (pipeline_simulation.h) proves a list sound before anything runs.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace troupe::parallel::pp {

enum class Op : uint8_t {
  forward,          // F
  backward,         // B: input and weight gradients together
  backward_input,   // I: the input gradient only (zero-bubble schedules' "B")
  backward_weight,  // W: the weight gradient of an earlier I
  send_forward,     // the activation entering `stage`, to the rank that runs it
  recv_forward,
  send_backward,    // the gradient leaving `stage + 1` into `stage`, to the rank that runs it
  recv_backward,
};

bool is_compute(Op op);
bool is_send(Op op);
bool is_recv(Op op);
// "F", "B", "I", "W", "sendF", "recvF", "sendB", "recvB".
const char* op_name(Op op);

struct Action {
  Op op;
  int stage = 0;       // the stage computing it; for a transfer, the stage receiving the data
  int microbatch = 0;
  int peer = -1;       // transfers: the other rank
  bool operator==(const Action&) const = default;
};
std::string to_string(const Action& a);  // "F3.1" (stage 3, micro-batch 1), "sendF4.1>2"

struct Schedule {
  std::string name;
  int ranks = 1;
  int microbatches = 1;
  std::vector<int> stage_rank;  // the rank that runs each stage; stage_rank.size() stages
  std::vector<std::vector<Action>> actions;  // per rank, in execution order
  bool split_backward = false;  // I and W instead of B

  int stages() const { return static_cast<int>(stage_rank.size()); }
  // The stages a rank runs, in ascending order.
  std::vector<int> stages_of(int rank) const;
};

class ScheduleError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

// The computes whose results compute `a` needs, in a pipeline of `stages` stages: F the previous
// stage's F; B or I its own F and the next stage's input gradient (listed as I, which a B also
// makes); W its own I.
std::vector<Action> inputs_of(const Action& a, int stages);

// GPipe, 1F1B, Interleaved1F1B, ZBVZeroBubble, InterleavedZeroBubble (torchtitan's names).
const std::vector<std::string>& schedule_names();
bool is_interleaved(const std::string& name);  // more than one stage per rank
// stages_per_rank: interleaved schedules only (0: 2); ZBVZeroBubble always has 2 (a "V").
// Throws ScheduleError for an unknown name or an impossible combination, naming it.
Schedule make_schedule(const std::string& name, int ranks, int microbatches, int stages_per_rank = 0);

// How long each kind of compute takes, in any unit; the generators and the checker use these.
struct Costs {
  double forward = 1, backward = 2, backward_input = 1, backward_weight = 1;
  double of(Op op) const;
};

// Adds the transfers to compute-only lists: every send right after its producer and every
// receive posted ahead of its consumer, all ordered by when a unit-cost run would make the data,
// so that every pair of ranks posts its transfers in the same order (no deadlock on in-order
// channels such as one NCCL stream).
void add_transfers(Schedule& s, const Costs& costs = {});

}  // namespace troupe::parallel::pp
