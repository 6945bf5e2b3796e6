#include "comm/flight_record_report.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <map>
#include <set>
#include <sstream>
#include <stdexcept>

#include "checkpoint/file_io.h"

namespace troupe::comm {

namespace {

struct Operation {
  std::string op, dtype, state;
  int64_t elements = 0, step = 0;
};

// One rank's view of one group: its operations by number.
struct RankInGroup {
  std::map<int64_t, Operation> by_seq;
  int64_t issued = 0, finished = 0;  // the highest numbers
};

struct GroupView {
  int size = 0;  // as the members joined it (0: unknown)
  std::map<int, RankInGroup> ranks;
};

bool point_to_point(const std::string& op) { return op.rfind("send", 0) == 0 || op.rfind("recv", 0) == 0; }

std::string describe(const Operation& o) {
  return o.op + " of " + std::to_string(o.elements) + " " + o.dtype + " elements";
}

// Reads one record into `groups`; returns its rank.
int read_record(const std::filesystem::path& path, std::map<std::string, GroupView>& groups) {
  try {
    const auto record = nlohmann::json::parse(checkpoint::read_file(path.string()));
    const int rank = record.at("rank").get<int>();
    // Groups joined (older records have none): a member that issued nothing is at #0.
    for (const auto& g : record.value("groups", nlohmann::json::array())) {
      auto& view = groups[g.at("group").get<std::string>()];
      view.size = std::max(view.size, g.at("size").get<int>());
      auto& mine = view.ranks[rank];
      mine.issued = std::max(mine.issued, g.at("issued").get<int64_t>());
    }
    for (const auto& e : record.at("entries")) {
      auto& mine = groups[e.at("group").get<std::string>()].ranks[rank];
      const auto seq = e.at("seq").get<int64_t>();
      Operation o{e.at("op").get<std::string>(), e.at("dtype").get<std::string>(), e.at("state").get<std::string>(),
                  e.at("elements").get<int64_t>(), e.value("step", int64_t{0})};
      mine.issued = std::max(mine.issued, seq);
      if (o.state == "finished") mine.finished = std::max(mine.finished, seq);
      mine.by_seq[seq] = std::move(o);
    }
    return rank;
  } catch (const nlohmann::json::exception& e) {
    throw std::runtime_error(path.string() + " is not a flight record: " + e.what());
  }
}

// The first number where two ranks' records disagree on the operation (empty: none).
std::string first_mismatch(const GroupView& view) {
  std::map<int64_t, std::vector<std::pair<int, const Operation*>>> by_seq;
  for (const auto& [rank, g] : view.ranks)
    for (const auto& [seq, o] : g.by_seq) by_seq[seq].emplace_back(rank, &o);
  for (const auto& [seq, seen] : by_seq) {
    const auto& [first_rank, first] = seen.front();
    for (const auto& [rank, o] : seen)
      if (o->op != first->op || o->elements != first->elements || o->dtype != first->dtype)
        return "mismatch at #" + std::to_string(seq) + ": rank " + std::to_string(first_rank) + ' ' +
               describe(*first) + ", rank " + std::to_string(rank) + ' ' + describe(*o);
  }
  return "";
}

void report_group(std::ostringstream& out, const std::string& name, const GroupView& view) {
  out << name << " (ranks";
  for (const auto& [rank, _] : view.ranks) out << ' ' << rank;
  if (view.size > 0) out << " of " << view.size;
  out << "):\n";
  bool p2p = false;
  for (const auto& [rank, g] : view.ranks) {
    out << "  rank " << rank << ": ";
    if (g.issued == 0) {
      out << "joined, issued nothing yet\n";
      continue;
    }
    out << "issued up to #" << g.issued;
    if (const auto last = g.by_seq.find(g.issued); last != g.by_seq.end())
      out << " (" << last->second.op << " in step " << last->second.step << ", " << last->second.state << ")";
    out << ", finished up to #" << g.finished << '\n';
    for (const auto& [seq, o] : g.by_seq) p2p = p2p || point_to_point(o.op);
  }
  if (p2p) {
    out << "  point-to-point transfers: their numbers need not line up across ranks\n";
    return;
  }
  const bool all_here = view.size == 0 || static_cast<int>(view.ranks.size()) >= view.size;
  if (!all_here)
    out << "  missing: " << view.size - static_cast<int>(view.ranks.size()) << " of its " << view.size
        << " ranks have no record of it here (not connected yet, or another node's files not gathered)\n";
  // Every rank issues a group's collectives in one order: the lowest last number is who the
  // others wait for.
  int64_t lowest = INT64_MAX, highest = 0;
  for (const auto& [rank, g] : view.ranks) {
    lowest = std::min(lowest, g.issued);
    highest = std::max(highest, g.issued);
  }
  if (lowest < highest) {
    out << "  behind:";
    for (const auto& [rank, g] : view.ranks)
      if (g.issued == lowest) out << " rank " << rank;
    out << " (issued up to #" << lowest << "; others reached #" << highest << ")\n";
  }
  const auto mismatch = first_mismatch(view);
  if (!mismatch.empty()) out << "  " << mismatch << '\n';
  if (lowest == highest && mismatch.empty() && all_here) out << "  together: every rank issued up to #" << highest << '\n';
}

}  // namespace

std::string flight_record_report(const std::string& folder) {
  std::map<std::string, GroupView> groups;
  std::error_code ec;
  std::vector<std::filesystem::path> paths;
  for (const auto& entry : std::filesystem::directory_iterator(folder, ec))
    if (entry.path().extension() == ".json") paths.push_back(entry.path());
  if (ec) throw std::runtime_error("cannot read " + folder + ": " + ec.message());
  if (paths.empty()) throw std::runtime_error(folder + " holds no flight records (*.json)");
  std::sort(paths.begin(), paths.end());
  std::set<int> ranks;
  for (const auto& path : paths) ranks.insert(read_record(path, groups));

  std::ostringstream out;
  out << paths.size() << (paths.size() == 1 ? " rank's" : " ranks'") << " records in " << folder << '\n';
  for (int rank : ranks) {
    const bool member = std::any_of(groups.begin(), groups.end(), [&](const auto& g) { return g.second.ranks.count(rank); });
    if (!member) out << "rank " << rank << ": in no group yet (its communicators were not connected)\n";
  }
  for (const auto& [name, view] : groups) report_group(out, name, view);
  return out.str();
}

}  // namespace troupe::comm
