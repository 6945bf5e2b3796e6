#include "data/document_reader.h"

#include <nlohmann/json.hpp>
#include <stdexcept>

namespace troupe::data {

std::string SkipCounts::breakdown(const std::string& field) const {
  return "empty " + std::to_string(empty) + ", without " + field + " " + std::to_string(missing_field) + ", not JSON " +
         std::to_string(malformed_json) + ", invalid UTF-8 " + std::to_string(invalid_utf8);
}

namespace {
constexpr int64_t kLoggedPerKind = 5;  // then only counted: a bad file must not flood the log
}

DocumentReader::DocumentReader(std::vector<std::string> files, TextFormat format, std::string text_field, SkipLog log)
    : files_(std::move(files)), format_(format), text_field_(std::move(text_field)), log_(std::move(log)) {}

void DocumentReader::seek(const DocumentPlace& place) {
  if (place.file < 0 || place.file > static_cast<int64_t>(files_.size()) || place.offset < 0 || place.ordinal < 0)
    throw std::invalid_argument("document position out of range");
  cursor_ = place;
  in_.close();
  file_open_ = false;
}

bool DocumentReader::open_next_file() {
  while (cursor_.file < static_cast<int64_t>(files_.size())) {
    const auto& path = files_[cursor_.file];
    in_.close();
    in_.clear();
    in_.open(path, std::ios::binary);
    if (!in_) throw std::runtime_error("dataset file '" + path + "' cannot be opened");
    in_.seekg(cursor_.offset > 0 ? cursor_.offset - 1 : 0);
    if (in_ && cursor_.offset > 0) check_starts_document();
    if (in_) {
      file_open_ = true;
      return true;
    }
    ++cursor_.file;  // offset at or past the end: the file is done
    cursor_.offset = 0;
  }
  return false;
}

// A saved position must fall where a record starts: after a newline (JSON Lines) or a blank
// line (text). Anything else means the files changed since the position was saved.
void DocumentReader::check_starts_document() {
  const size_t need = format_ == TextFormat::PlainText && cursor_.offset >= 2 ? 2 : 1;
  if (need == 2) in_.seekg(cursor_.offset - 2);
  std::string before(need, '\0');
  in_.read(before.data(), static_cast<std::streamsize>(need));
  if (!in_ || before != std::string(need, '\n'))
    throw std::runtime_error("data position: byte " + std::to_string(cursor_.offset) + " of '" + files_[cursor_.file] +
                             "' does not name a document start (did the files change?)");
}

// One line without its '\n'; moves to the next file at the end of one.
bool DocumentReader::read_line(std::string& line) {
  while (true) {
    if (!file_open_ && !open_next_file()) return false;
    line_offset_ = cursor_.offset;
    if (std::getline(in_, line)) {
      cursor_.offset += static_cast<int64_t>(line.size()) + (in_.eof() ? 0 : 1);
      return true;
    }
    if (in_.bad()) throw std::runtime_error("dataset file '" + files_[cursor_.file] + "': read error");
    file_open_ = false;
    ++cursor_.file;
    cursor_.offset = 0;
  }
}

bool DocumentReader::next(Document& doc) {
  return format_ == TextFormat::PlainText ? next_plain(doc) : next_json(doc);
}

bool DocumentReader::next_plain(Document& doc) {
  std::string line;
  doc.text.clear();
  while (true) {
    const int64_t file_before = cursor_.file;
    if (!read_line(line)) break;
    if (!doc.text.empty() && cursor_.file != file_before) {
      // The document ended with its file; this line starts the next one. Re-read it later.
      seek({cursor_.epoch, cursor_.file, line_offset_, cursor_.ordinal});
      break;
    }
    if (line.empty()) {
      if (doc.text.empty()) continue;
      break;
    }
    if (doc.text.empty())
      doc.place = {cursor_.epoch, cursor_.file, line_offset_, cursor_.ordinal};
    else
      doc.text += '\n';
    doc.text += line;
  }
  if (doc.text.empty()) return false;
  ++cursor_.ordinal;
  return true;
}

bool DocumentReader::next_json(Document& doc) {
  std::string line;
  while (read_line(line)) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;  // blank lines hold no record
    doc.place = {cursor_.epoch, cursor_.file, line_offset_, cursor_.ordinal++};
    const auto where = files_[doc.place.file] + " at byte " + std::to_string(doc.place.offset);
    nlohmann::json record = nlohmann::json::parse(line, nullptr, false);
    if (record.is_discarded()) {
      skip(skips_.malformed_json, doc.place.epoch, "skipped a line that is not JSON: " + where);
      continue;
    }
    auto field = record.is_object() ? record.find(text_field_) : record.end();
    if (!record.is_object() || field == record.end() || !field->is_string()) {
      skip(skips_.missing_field, doc.place.epoch, "skipped a record without a string \"" + text_field_ + "\": " + where);
      continue;
    }
    doc.text = field->get<std::string>();
    if (doc.text.empty()) {
      skip(skips_.empty, doc.place.epoch, "skipped an empty document: " + where);
      continue;
    }
    return true;
  }
  return false;
}

void DocumentReader::report_invalid_utf8(const DocumentPlace& place, const std::string& why) {
  skip(skips_.invalid_utf8, place.epoch, "skipped a document with " + why + ": " + files_[place.file] + " at byte " +
                                std::to_string(place.offset));
}

void DocumentReader::skip(int64_t& counter, int64_t epoch, const std::string& what) {
  // A bad record comes back every pass; count and log the first pass this reader reads.
  if (counted_epoch_ < 0) counted_epoch_ = epoch;
  if (epoch != counted_epoch_) return;
  if (++counter <= kLoggedPerKind && log_) log_(what + (counter == kLoggedPerKind ? " (further ones only counted)" : ""));
}

}  // namespace troupe::data
