#include "comm/flight_record_report.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <map>
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

bool point_to_point(const std::string& op) { return op.rfind("send", 0) == 0 || op.rfind("recv", 0) == 0; }

std::string describe(const Operation& o) {
  return o.op + " of " + std::to_string(o.elements) + " " + o.dtype + " elements";
}

}  // namespace

std::string flight_record_report(const std::string& folder) {
  std::map<std::string, std::map<int, RankInGroup>> groups;  // group -> rank -> progress
  int files = 0;
  std::error_code ec;
  std::vector<std::filesystem::path> paths;
  for (const auto& entry : std::filesystem::directory_iterator(folder, ec))
    if (entry.path().extension() == ".json") paths.push_back(entry.path());
  if (ec) throw std::runtime_error("cannot read " + folder + ": " + ec.message());
  std::sort(paths.begin(), paths.end());
  for (const auto& path : paths) {
    nlohmann::json record;
    int rank = 0;
    try {
      record = nlohmann::json::parse(checkpoint::read_file(path.string()));
      rank = record.at("rank").get<int>();
      for (const auto& e : record.at("entries")) {
        auto& mine = groups[e.at("group").get<std::string>()][rank];
        const auto seq = e.at("seq").get<int64_t>();
        Operation o{e.at("op").get<std::string>(), e.at("dtype").get<std::string>(), e.at("state").get<std::string>(),
                    e.at("elements").get<int64_t>(), e.value("step", int64_t{0})};
        mine.issued = std::max(mine.issued, seq);
        if (o.state == "finished") mine.finished = std::max(mine.finished, seq);
        mine.by_seq[seq] = std::move(o);
      }
    } catch (const nlohmann::json::exception& e) {
      throw std::runtime_error(path.string() + " is not a flight record: " + e.what());
    }
    ++files;
  }
  if (files == 0) throw std::runtime_error(folder + " holds no flight records (*.json)");

  std::ostringstream out;
  out << files << (files == 1 ? " rank's" : " ranks'") << " records in " << folder << '\n';
  for (const auto& [group, ranks] : groups) {
    out << group << " (ranks";
    for (const auto& [rank, _] : ranks) out << ' ' << rank;
    out << "):\n";
    bool p2p = false;
    for (const auto& [rank, g] : ranks) {
      const auto& last = g.by_seq.at(g.issued);
      out << "  rank " << rank << ": issued up to #" << g.issued << " (" << last.op << " in step " << last.step << ", "
          << last.state << "), finished up to #" << g.finished << '\n';
      for (const auto& [seq, o] : g.by_seq) p2p = p2p || point_to_point(o.op);
    }
    if (p2p) {
      out << "  point-to-point transfers: their numbers need not line up across ranks\n";
      continue;
    }
    // Every rank issues a group's collectives in one order: the lowest last number is who the
    // others wait for.
    int64_t lowest = INT64_MAX, highest = 0;
    for (const auto& [rank, g] : ranks) {
      lowest = std::min(lowest, g.issued);
      highest = std::max(highest, g.issued);
    }
    if (lowest < highest) {
      out << "  behind:";
      for (const auto& [rank, g] : ranks)
        if (g.issued == lowest) out << " rank " << rank;
      out << " (issued up to #" << lowest << "; others reached #" << highest << ")\n";
    }
    // The first number where two ranks' records disagree on the operation.
    std::map<int64_t, std::vector<std::pair<int, const Operation*>>> by_seq;
    for (const auto& [rank, g] : ranks)
      for (const auto& [seq, o] : g.by_seq) by_seq[seq].emplace_back(rank, &o);
    bool reported = false;
    for (const auto& [seq, seen] : by_seq) {
      const auto& [first_rank, first] = seen.front();
      for (const auto& [rank, o] : seen) {
        if (o->op == first->op && o->elements == first->elements && o->dtype == first->dtype) continue;
        out << "  mismatch at #" << seq << ": rank " << first_rank << ' ' << describe(*first) << ", rank " << rank
            << ' ' << describe(*o) << '\n';
        reported = true;
        break;
      }
      if (reported) break;
    }
    if (lowest == highest && !reported) out << "  together: every rank issued up to #" << highest << '\n';
  }
  return out.str();
}

}  // namespace troupe::comm
