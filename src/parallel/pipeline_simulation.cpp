#include "parallel/pipeline_simulation.h"

#include <algorithm>
#include <deque>
#include <limits>
#include <map>
#include <set>
#include <tuple>

namespace troupe::parallel::pp {

namespace {

constexpr double never = std::numeric_limits<double>::infinity();

// Finishing times of computes, keyed by what they make: F, the input gradient (I, or B), the
// weight gradient (W, or B).
struct Done {
  std::map<std::tuple<Op, int, int>, double> at;
  double of(Op op, int stage, int mb) const {
    const auto it = at.find({op, stage, mb});
    return it == at.end() ? never : it->second;
  }
  void record(const Action& a, double end) {
    if (a.op == Op::backward) {
      at[{Op::backward_input, a.stage, a.microbatch}] = end;
      at[{Op::backward_weight, a.stage, a.microbatch}] = end;
    } else {
      at[{a.op, a.stage, a.microbatch}] = end;
    }
  }
};

bool complementary(const Action& send, const Action& recv) {
  return ((send.op == Op::send_forward && recv.op == Op::recv_forward) ||
          (send.op == Op::send_backward && recv.op == Op::recv_backward)) &&
         send.stage == recv.stage && send.microbatch == recv.microbatch;
}

}  // namespace

double Timeline::bubble() const {
  if (makespan <= 0 || busy.empty()) return 0;
  double idle = 0;
  for (double b : busy) idle += (makespan - b) / makespan;
  return idle / static_cast<double>(busy.size());
}

double one_f_one_b_bubble(int ranks, int microbatches) {
  return static_cast<double>(ranks - 1) / static_cast<double>(microbatches + ranks - 1);
}

Timeline simulate(const Schedule& s, const Costs& costs, bool implicit_transfers) {
  const int P = s.ranks, S = s.stages();
  Timeline t;
  t.per_rank.resize(P);
  t.busy.assign(P, 0);
  t.peak_in_flight.assign(P, 0);
  std::vector<size_t> pc(P, 0);
  std::vector<double> free_at(P, 0);
  std::vector<int> held(P, 0);
  std::vector<std::deque<Action>> channel(P);              // posted, not yet completed transfers
  std::vector<std::map<std::tuple<Op, int, int>, double>> received(P);  // (recv op, stage, mb) -> when
  Done done;
  double now = 0;

  // What a compute on rank r waits for, or "" when it can start now: an input made on this rank
  // (or anywhere, with implicit transfers) must be done, one made elsewhere received.
  auto waits_for = [&](int r, const Action& a) -> std::string {
    for (const auto& in : inputs_of(a, S)) {
      if (implicit_transfers || s.stage_rank[in.stage] == r) {
        if (done.of(in.op, in.stage, a.microbatch) > now) return to_string(in);
        continue;
      }
      const Op recv = in.op == Op::forward ? Op::recv_forward : Op::recv_backward;
      const auto it = received[r].find({recv, a.stage, a.microbatch});
      if (it == received[r].end() || it->second > now) return to_string({recv, a.stage, a.microbatch, s.stage_rank[in.stage]});
    }
    return "";
  };

  for (;;) {
    bool progress = false;
    for (int r = 0; r < P; ++r) {
      const auto& list = s.actions[r];
      while (pc[r] < list.size() && free_at[r] <= now) {
        const Action& a = list[pc[r]];
        if (!is_compute(a.op)) {
          if (!implicit_transfers) {
            if (is_send(a.op)) {
              const bool fwd = a.op == Op::send_forward;
              const int from = fwd ? a.stage - 1 : a.stage + 1;
              if (from < 0 || from >= S || s.stage_rank[from] != r)
                throw ScheduleError("rank " + std::to_string(r) + " sends " + to_string(a) + " but does not run stage " +
                                    std::to_string(from));
              if (done.of(fwd ? Op::forward : Op::backward_input, from, a.microbatch) > now)
                throw ScheduleError("rank " + std::to_string(r) + " posts " + to_string(a) + " before computing it");
            }
            channel[r].push_back(a);
          }
          ++pc[r];
          progress = true;
          continue;
        }
        if (!waits_for(r, a).empty()) break;
        if (a.op == Op::forward) t.peak_in_flight[r] = std::max(t.peak_in_flight[r], ++held[r]);
        if (a.op == Op::backward || a.op == Op::backward_weight) --held[r];
        const double end = now + costs.of(a.op);
        t.per_rank[r].push_back({a, now, end});
        t.busy[r] += end - now;
        done.record(a, end);
        free_at[r] = end;
        ++pc[r];
        progress = true;
      }
    }
    // Transfers complete pairwise at the heads of both channels.
    for (int r = 0; r < P; ++r) {
      while (!channel[r].empty()) {
        const Action h = channel[r].front();
        const int q = h.peer;
        if (q < 0 || q >= P || q == r)
          throw ScheduleError("rank " + std::to_string(r) + " posts " + to_string(h) + " to no other rank");
        if (channel[q].empty()) break;
        const Action g = channel[q].front();
        if (g.peer != r) break;
        const bool ok = is_send(h.op) ? complementary(h, g) : complementary(g, h);
        if (!ok)
          throw ScheduleError("transfers out of order: rank " + std::to_string(r) + " posts " + to_string(h) +
                              " while rank " + std::to_string(q) + " posts " + to_string(g));
        const Action& recv = is_recv(h.op) ? h : g;
        const int receiver = is_recv(h.op) ? r : q;
        received[receiver][{recv.op, recv.stage, recv.microbatch}] = now;
        t.per_rank[r].push_back({h, now, now});
        t.per_rank[q].push_back({g, now, now});
        channel[r].pop_front();
        channel[q].pop_front();
        progress = true;
      }
    }
    if (progress) continue;
    double next = never;
    for (int r = 0; r < P; ++r)
      if (free_at[r] > now) next = std::min(next, free_at[r]);
    if (next != never) {
      now = next;
      continue;
    }
    bool finished = true;
    std::string stuck;
    for (int r = 0; r < P; ++r) {
      const bool rank_done = pc[r] == s.actions[r].size() && channel[r].empty();
      finished = finished && rank_done;
      if (rank_done) continue;
      stuck += "; rank " + std::to_string(r);
      if (pc[r] < s.actions[r].size()) {
        const auto& a = s.actions[r][pc[r]];
        stuck += " at " + to_string(a) + " waiting for " + waits_for(r, a);
      }
      if (!channel[r].empty()) stuck += ", channel head " + to_string(channel[r].front());
    }
    if (!finished) throw ScheduleError(s.name + " deadlocks at time " + std::to_string(now) + stuck);
    break;
  }
  t.makespan = now;
  for (int r = 0; r < P; ++r) t.makespan = std::max(t.makespan, free_at[r]);
  return t;
}

Timeline check(const Schedule& s, const Costs& costs) {
  const int P = s.ranks, S = s.stages(), M = s.microbatches;
  if (static_cast<int>(s.actions.size()) != P)
    throw ScheduleError(s.name + ": " + std::to_string(s.actions.size()) + " action lists for " + std::to_string(P) + " ranks");
  for (int st = 0; st < S; ++st)
    if (s.stage_rank[st] < 0 || s.stage_rank[st] >= P)
      throw ScheduleError(s.name + ": stage " + std::to_string(st) + " on rank " + std::to_string(s.stage_rank[st]));
  const std::vector<Op> phases = s.split_backward ? std::vector<Op>{Op::forward, Op::backward_input, Op::backward_weight}
                                                  : std::vector<Op>{Op::forward, Op::backward};
  // Each compute exactly once, on its stage's rank, its phases in order; each needed transfer
  // exactly once on both ends.
  std::set<std::tuple<int, Op, int, int, int>> transfers;  // (rank, op, stage, mb, peer)
  for (int r = 0; r < P; ++r) {
    std::map<std::pair<int, int>, size_t> phase;  // (stage, mb) -> phases seen
    for (const auto& a : s.actions[r]) {
      const auto where = s.name + ": rank " + std::to_string(r) + " " + to_string(a);
      if (a.stage < 0 || a.stage >= S || a.microbatch < 0 || a.microbatch >= M)
        throw ScheduleError(where + " names no stage or micro-batch of the schedule");
      if (!is_compute(a.op)) {
        if (!transfers.insert({r, a.op, a.stage, a.microbatch, a.peer}).second)
          throw ScheduleError(where + " appears twice");
        continue;
      }
      if (s.stage_rank[a.stage] != r)
        throw ScheduleError(where + ": stage " + std::to_string(a.stage) + " runs on rank " +
                            std::to_string(s.stage_rank[a.stage]));
      auto& seen = phase[{a.stage, a.microbatch}];
      if (seen >= phases.size() || phases[seen] != a.op)
        throw ScheduleError(where + " out of order: expected " +
                            (seen < phases.size() ? std::string(op_name(phases[seen])) : std::string("nothing more")));
      ++seen;
    }
    for (int st : s.stages_of(r))
      for (int mb = 0; mb < M; ++mb)
        if (phase[{st, mb}] != phases.size())
          throw ScheduleError(s.name + ": rank " + std::to_string(r) + " never runs " +
                              op_name(phases[phase[{st, mb}]]) + std::to_string(st) + "." + std::to_string(mb));
  }
  std::set<std::tuple<int, Op, int, int, int>> needed;
  for (int st = 0; st + 1 < S; ++st) {
    const int a = s.stage_rank[st], b = s.stage_rank[st + 1];
    if (a == b) continue;
    for (int mb = 0; mb < M; ++mb) {
      needed.insert({a, Op::send_forward, st + 1, mb, b});
      needed.insert({b, Op::recv_forward, st + 1, mb, a});
      needed.insert({b, Op::send_backward, st, mb, a});
      needed.insert({a, Op::recv_backward, st, mb, b});
    }
  }
  for (const auto& x : needed)
    if (!transfers.count(x))
      throw ScheduleError(s.name + ": rank " + std::to_string(std::get<0>(x)) + " never posts " +
                          to_string({std::get<1>(x), std::get<2>(x), std::get<3>(x), std::get<4>(x)}));
  for (const auto& x : transfers)
    if (!needed.count(x))
      throw ScheduleError(s.name + ": rank " + std::to_string(std::get<0>(x)) + " posts " +
                          to_string({std::get<1>(x), std::get<2>(x), std::get<3>(x), std::get<4>(x)}) +
                          ", which no stage needs");
  return simulate(s, costs);
}

}  // namespace troupe::parallel::pp
