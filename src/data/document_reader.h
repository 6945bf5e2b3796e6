// Reads the documents of text and JSON Lines files one at a time, in file order, from any
// document's saved place: the streaming half of the data pipeline (nothing is read whole).
// A plain text file holds documents separated by blank lines; a JSON Lines file one JSON
// object per line, the document being the string under `text_field`.
#pragma once
#include <cstdint>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

namespace troupe::data {

enum class TextFormat { PlainText, JsonLines };

// Where a document starts; `ordinal` counts every document record of the pass from 0, skipped
// ones included, so a rank's share (ordinal mod ranks) never depends on what was skipped.
struct DocumentPlace {
  int64_t epoch = 0;
  int64_t file = 0;
  int64_t offset = 0;  // byte offset of its first line
  int64_t ordinal = 0;
};

struct Document {
  std::string text;
  DocumentPlace place;
};

// Counted skips (of the first pass read: a bad record comes back every pass); each kind's
// first few are also logged with file and byte offset.
struct SkipCounts {
  int64_t empty = 0;
  int64_t missing_field = 0;  // JSON Lines: not an object, no such key, or not a string
  int64_t malformed_json = 0;
  int64_t invalid_utf8 = 0;   // counted by the tokenizing side, which checks UTF-8
  int64_t total() const { return empty + missing_field + malformed_json + invalid_utf8; }
  // "empty E, without FIELD M, not JSON J, invalid UTF-8 U"; `field` names the JSON Lines text field.
  std::string breakdown(const std::string& field) const;
};

using SkipLog = std::function<void(const std::string&)>;

class DocumentReader {
 public:
  // Opens nothing yet; a file that cannot be opened is a std::runtime_error from next().
  DocumentReader(std::vector<std::string> files, TextFormat format, std::string text_field, SkipLog log);

  // The next document of the pass, or false at its end (call seek() for the next pass).
  bool next(Document& doc);
  void seek(const DocumentPlace& place);

  const std::vector<std::string>& files() const { return files_; }
  const SkipCounts& skips() const { return skips_; }
  // Logs (rate-limited per kind) and counts a skip that the caller detected.
  void report_invalid_utf8(const DocumentPlace& place, const std::string& why);

 private:
  bool open_next_file();
  void check_starts_document();
  bool read_line(std::string& line);
  bool next_plain(Document& doc);
  bool next_json(Document& doc);
  void skip(int64_t& counter, int64_t epoch, const std::string& what);

  std::vector<std::string> files_;
  TextFormat format_;
  std::string text_field_;
  SkipLog log_;
  SkipCounts skips_;
  DocumentPlace cursor_;  // where the next record starts
  std::ifstream in_;
  bool file_open_ = false;
  int64_t line_offset_ = 0;  // offset of the line read last
  int64_t counted_epoch_ = -1;  // the pass whose skips are counted
};

}  // namespace troupe::data
