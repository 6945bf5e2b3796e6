#include "parallel/pipeline_schedule.h"

#include <algorithm>
#include <limits>
#include <map>
#include <optional>
#include <tuple>

#include "parallel/pipeline_simulation.h"

namespace troupe::parallel::pp {

bool is_compute(Op op) { return op <= Op::backward_weight; }
bool is_send(Op op) { return op == Op::send_forward || op == Op::send_backward; }
bool is_recv(Op op) { return op == Op::recv_forward || op == Op::recv_backward; }

const char* op_name(Op op) {
  switch (op) {
    case Op::forward: return "F";
    case Op::backward: return "B";
    case Op::backward_input: return "I";
    case Op::backward_weight: return "W";
    case Op::send_forward: return "sendF";
    case Op::recv_forward: return "recvF";
    case Op::send_backward: return "sendB";
    case Op::recv_backward: return "recvB";
  }
  return "?";
}

std::string to_string(const Action& a) {
  std::string s = op_name(a.op) + std::to_string(a.stage) + "." + std::to_string(a.microbatch);
  if (is_send(a.op)) s += ">" + std::to_string(a.peer);
  if (is_recv(a.op)) s += "<" + std::to_string(a.peer);
  return s;
}

std::vector<int> Schedule::stages_of(int rank) const {
  std::vector<int> out;
  for (int s = 0; s < stages(); ++s)
    if (stage_rank[s] == rank) out.push_back(s);
  return out;
}

double Costs::of(Op op) const {
  switch (op) {
    case Op::forward: return forward;
    case Op::backward: return backward;
    case Op::backward_input: return backward_input;
    case Op::backward_weight: return backward_weight;
    default: return 0;
  }
}

std::vector<Action> inputs_of(const Action& a, int stages) {
  const int mb = a.microbatch;
  switch (a.op) {
    case Op::forward:
      if (a.stage == 0) return {};
      return {{Op::forward, a.stage - 1, mb, -1}};
    case Op::backward:
    case Op::backward_input:
      if (a.stage == stages - 1) return {{Op::forward, a.stage, mb, -1}};
      return {{Op::forward, a.stage, mb, -1}, {Op::backward_input, a.stage + 1, mb, -1}};
    case Op::backward_weight: return {{Op::backward_input, a.stage, mb, -1}};
    default: return {};
  }
}

const std::vector<std::string>& schedule_names() {
  static const std::vector<std::string> names{"GPipe", "1F1B", "Interleaved1F1B", "ZBVZeroBubble",
                                              "InterleavedZeroBubble"};
  return names;
}

bool is_interleaved(const std::string& name) {
  return name == "Interleaved1F1B" || name == "ZBVZeroBubble" || name == "InterleavedZeroBubble";
}

namespace {

Action compute(Op op, int stage, int mb) { return {op, stage, mb, -1}; }

Schedule base(const std::string& name, int p, int m, std::vector<int> stage_rank, bool split) {
  Schedule s;
  s.name = name;
  s.ranks = p;
  s.microbatches = m;
  s.stage_rank = std::move(stage_rank);
  s.split_backward = split;
  s.actions.resize(p);
  return s;
}

std::vector<int> one_stage_per_rank(int p) {
  std::vector<int> v(p);
  for (int r = 0; r < p; ++r) v[r] = r;
  return v;
}

// Stage s on rank s mod p: the "loop" placement of the interleaved schedules.
std::vector<int> loop_placement(int p, int v) {
  std::vector<int> out(static_cast<size_t>(p * v));
  for (int s = 0; s < p * v; ++s) out[s] = s % p;
  return out;
}

// Two stages per rank in a V: rank r runs stage r and stage 2p - 1 - r, so the first and the
// last stage share rank 0 and the loss's gradient turns around without a transfer.
std::vector<int> v_placement(int p) {
  std::vector<int> out(static_cast<size_t>(2 * p));
  for (int s = 0; s < 2 * p; ++s) out[s] = s < p ? s : 2 * p - 1 - s;
  return out;
}

Schedule gpipe(int p, int m) {
  auto s = base("GPipe", p, m, one_stage_per_rank(p), false);
  for (int r = 0; r < p; ++r) {
    for (int mb = 0; mb < m; ++mb) s.actions[r].push_back(compute(Op::forward, r, mb));
    for (int mb = 0; mb < m; ++mb) s.actions[r].push_back(compute(Op::backward, r, mb));
  }
  return s;
}

// Rank r runs p - 1 - r forwards ahead, then alternates one forward and one backward, then
// drains the backwards: at most p - r micro-batches in flight.
Schedule one_f_one_b(int p, int m) {
  auto s = base("1F1B", p, m, one_stage_per_rank(p), false);
  for (int r = 0; r < p; ++r) {
    auto& a = s.actions[r];
    const int warmup = std::min(p - 1 - r, m);
    for (int mb = 0; mb < warmup; ++mb) a.push_back(compute(Op::forward, r, mb));
    for (int i = 0; i < m - warmup; ++i) {
      a.push_back(compute(Op::forward, r, warmup + i));
      a.push_back(compute(Op::backward, r, i));
    }
    for (int mb = m - warmup; mb < m; ++mb) a.push_back(compute(Op::backward, r, mb));
  }
  return s;
}

// Megatron's interleaved 1F1B: micro-batches go through a rank's v stages in groups of p; the
// k-th forward of a rank is chunk (k / p) mod v of micro-batch (k / pv) p + k mod p, backwards
// the same with the chunks reversed; rank r runs 2 (p - 1 - r) + (v - 1) p forwards ahead.
Schedule interleaved_one_f_one_b(int p, int m, int v) {
  if (m % p != 0)
    throw ScheduleError("Interleaved1F1B needs the micro-batches (" + std::to_string(m) +
                        ") to be a multiple of the pipeline degree (" + std::to_string(p) + ")");
  auto s = base("Interleaved1F1B", p, m, loop_placement(p, v), false);
  const int total = m * v;
  auto nth = [&](int k, bool backward, int r) {
    const int group = k % (p * v);
    int chunk = group / p;
    if (backward) chunk = v - 1 - chunk;
    const int mb = (k / (p * v)) * p + k % p;
    return compute(backward ? Op::backward : Op::forward, chunk * p + r, mb);
  };
  for (int r = 0; r < p; ++r) {
    auto& a = s.actions[r];
    const int warmup = std::min(total, 2 * (p - 1 - r) + (v - 1) * p);
    for (int k = 0; k < warmup; ++k) a.push_back(nth(k, false, r));
    for (int i = 0; i < total - warmup; ++i) {
      a.push_back(nth(warmup + i, false, r));
      a.push_back(nth(i, true, r));
    }
    for (int k = total - warmup; k < total; ++k) a.push_back(nth(k, true, r));
  }
  return s;
}

// Zero-bubble schedules, built by list scheduling on unit costs: a free rank runs a ready I
// first (it unblocks the ranks before it), else a ready F while its activations stay within
// `limit` (stage activations held), else a W (a W fills what would be a bubble), else waits.
// A micro-batch entering a rank is only admitted when room is left for the forwards it still
// needs on that rank, so admission can never starve a micro-batch already inside.
Schedule zero_bubble(const std::string& name, int p, int m, std::vector<int> placement, int limit) {
  auto s = base(name, p, m, std::move(placement), true);
  const int S = s.stages();
  const Costs costs{1, 2, 1, 1};
  constexpr double never = std::numeric_limits<double>::infinity();
  // done[op][stage][mb]: when it finished (infinity: not yet).
  std::map<Op, std::vector<std::vector<double>>> done;
  for (Op op : {Op::forward, Op::backward_input, Op::backward_weight})
    done[op] = std::vector<std::vector<double>>(S, std::vector<double>(m, never));
  std::vector<std::vector<int>> stages(p);
  for (int r = 0; r < p; ++r) stages[r] = s.stages_of(r);
  std::vector<double> free_at(p, 0);
  std::vector<int> held(p, 0);       // F done, W not yet
  std::vector<int> remaining(p, 0);  // forwards still owed on this rank to admitted micro-batches
  int left = 3 * S * m;
  double now = 0;
  auto ready = [&](Op op, int st, int mb) {
    if (done[op][st][mb] != never) return false;
    for (const auto& in : inputs_of({op, st, mb, -1}, S))
      if (done[in.op][in.stage][mb] > now) return false;
    return true;
  };
  while (left > 0) {
    bool started = false;
    for (int r = 0; r < p; ++r) {
      if (free_at[r] > now) continue;
      const int nst = static_cast<int>(stages[r].size());
      std::optional<Action> pick;
      auto first_ready = [&](Op op, auto&& allowed) -> std::optional<Action> {
        for (int mb = 0; mb < m; ++mb)
          for (auto it = stages[r].rbegin(); it != stages[r].rend(); ++it)  // deepest stage first
            if (ready(op, *it, mb) && allowed(*it)) return compute(op, *it, mb);
        return std::nullopt;
      };
      pick = first_ready(Op::backward_input, [](int) { return true; });
      if (!pick)
        pick = first_ready(Op::forward, [&](int st) {
          if (st != stages[r].front()) return true;  // owed already
          return held[r] + remaining[r] + nst <= limit;
        });
      if (!pick) pick = first_ready(Op::backward_weight, [](int) { return true; });
      if (!pick) continue;
      const auto& a = *pick;
      if (a.op == Op::forward) {
        ++held[r];
        if (a.stage == stages[r].front()) remaining[r] += nst - 1;
        else --remaining[r];
      }
      if (a.op == Op::backward_weight) --held[r];
      free_at[r] = now + costs.of(a.op);
      done[a.op][a.stage][a.microbatch] = free_at[r];
      s.actions[r].push_back(a);
      --left;
      started = true;
    }
    double next = never;
    for (int r = 0; r < p; ++r)
      if (free_at[r] > now) next = std::min(next, free_at[r]);
    if (next == never) {
      if (!started) throw std::logic_error(name + ": list scheduling made no progress");
      continue;
    }
    now = next;
  }
  return s;
}

}  // namespace

Schedule make_schedule(const std::string& name, int ranks, int microbatches, int stages_per_rank) {
  if (ranks < 1) throw ScheduleError("pipeline degree must be at least 1, not " + std::to_string(ranks));
  if (microbatches < 1) throw ScheduleError("micro-batches must be at least 1, not " + std::to_string(microbatches));
  if (stages_per_rank < 0) throw ScheduleError("stages per rank must be at least 1");
  if (stages_per_rank > 0 && !is_interleaved(name) && stages_per_rank != 1)
    throw ScheduleError(name + " runs one stage per rank, not " + std::to_string(stages_per_rank));
  if (name == "ZBVZeroBubble" && stages_per_rank > 0 && stages_per_rank != 2)
    throw ScheduleError("ZBVZeroBubble runs exactly two stages per rank (a V), not " + std::to_string(stages_per_rank));
  const int v = stages_per_rank == 0 ? 2 : stages_per_rank;
  Schedule s;
  if (name == "GPipe") s = gpipe(ranks, microbatches);
  else if (name == "1F1B") s = one_f_one_b(ranks, microbatches);
  else if (name == "Interleaved1F1B") s = interleaved_one_f_one_b(ranks, microbatches, v);
  // As much activation memory as 1F1B: p whole-rank micro-batches, each two half-size stages.
  else if (name == "ZBVZeroBubble") s = zero_bubble(name, ranks, microbatches, v_placement(ranks), 2 * ranks);
  else if (name == "InterleavedZeroBubble") s = zero_bubble(name, ranks, microbatches, loop_placement(ranks, v), v * ranks);
  else {
    std::string known;
    for (const auto& n : schedule_names()) known += (known.empty() ? "" : ", ") + n;
    throw ScheduleError("unknown pipeline schedule '" + name + "' (" + known + ")");
  }
  add_transfers(s);
  return s;
}

void add_transfers(Schedule& s, const Costs& costs) {
  const auto t = simulate(s, costs, /*implicit_transfers=*/true);
  const int S = s.stages();
  // When each compute ended, to time the transfer of its output.
  std::map<std::tuple<Op, int, int>, double> end;
  for (const auto& rank : t.per_rank)
    for (const auto& x : rank) end[{x.action.op == Op::backward ? Op::backward_input : x.action.op, x.action.stage,
                                    x.action.microbatch}] = x.end;
  // Sort key: time, then transfers before computes, then an order both ends of a transfer agree on.
  using Key = std::tuple<double, int, int, int, int, int>;
  for (int r = 0; r < s.ranks; ++r) {
    std::vector<std::pair<Key, Action>> keyed;
    int seq = 0;
    for (const auto& x : t.per_rank[r]) {
      const auto& a = x.action;
      keyed.push_back({{x.start, 1, 0, 0, 0, seq++}, a});
      const bool fwd = a.op == Op::forward, bwd = a.op == Op::backward || a.op == Op::backward_input;
      auto transfer = [&](Op op, double when, int stage, int peer) {
        const int dir = (op == Op::send_forward || op == Op::recv_forward) ? 0 : 1;
        keyed.push_back({{when, 0, dir, stage, a.microbatch, 0}, Action{op, stage, a.microbatch, peer}});
      };
      if (fwd && a.stage + 1 < S && s.stage_rank[a.stage + 1] != r)
        transfer(Op::send_forward, x.end, a.stage + 1, s.stage_rank[a.stage + 1]);
      if (fwd && a.stage > 0 && s.stage_rank[a.stage - 1] != r)
        transfer(Op::recv_forward, end.at({Op::forward, a.stage - 1, a.microbatch}), a.stage, s.stage_rank[a.stage - 1]);
      if (bwd && a.stage > 0 && s.stage_rank[a.stage - 1] != r)
        transfer(Op::send_backward, x.end, a.stage - 1, s.stage_rank[a.stage - 1]);
      if (bwd && a.stage + 1 < S && s.stage_rank[a.stage + 1] != r)
        transfer(Op::recv_backward, end.at({Op::backward_input, a.stage + 1, a.microbatch}), a.stage,
                 s.stage_rank[a.stage + 1]);
    }
    std::stable_sort(keyed.begin(), keyed.end(), [](const auto& x, const auto& y) { return x.first < y.first; });
    s.actions[r].clear();
    for (auto& [k, a] : keyed) s.actions[r].push_back(a);
  }
}

}  // namespace troupe::parallel::pp
