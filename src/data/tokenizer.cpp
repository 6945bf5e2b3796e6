#include "data/tokenizer.h"

#ifndef PCRE2_CODE_UNIT_WIDTH
#define PCRE2_CODE_UNIT_WIDTH 8
#endif
#include <pcre2.h>

#include <nlohmann/json.hpp>

#include "data/added_token_matcher.h"
#include "data/text_normalizer.h"
#include "data/tiktoken_file.h"

#include <algorithm>
#include <array>
#include <fstream>
#include <functional>
#include <queue>
#include <sstream>
#include <stdexcept>
#include <tuple>
#include <unordered_map>

namespace troupe::data {
namespace {

using json = nlohmann::json;
using ordered_json = nlohmann::ordered_json;

// Llama 3's pre-tokenizer split; the trainer uses it so trained files look like Llama 3's.
constexpr const char* kLlama3SplitRegex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};
template <class V>
using StringMap = std::unordered_map<std::string, V, StringHash, std::equal_to<>>;

uint64_t pair_key(int32_t a, int32_t b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }

std::string read_file(const std::string& path, const std::string& what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(what + " '" + path + "' cannot be opened");
  std::ostringstream buf;
  buf << in.rdbuf();
  if (in.bad()) throw std::runtime_error(what + " '" + path + "': read error");
  return std::move(buf).str();
}

// ---- UTF-8 ----

// Offset of the first byte that does not start a well-formed UTF-8 sequence (RFC 3629: no
// overlongs, surrogates or code points past U+10FFFF), or npos when all of `s` is valid.
size_t invalid_utf8_offset(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      if (c == 0xE0) lo = 0xA0;
      if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;
    } else {
      return i;
    }
    if (len > s.size() - i) return i;
    for (size_t k = 1; k < len; ++k) {
      const auto d = static_cast<unsigned char>(s[i + k]);
      if (d < (k == 1 ? lo : 0x80) || d > (k == 1 ? hi : 0xBF)) return i;
    }
    i += len;
  }
  return std::string_view::npos;
}

void require_utf8(std::string_view s, const std::string& what) {
  const size_t bad = invalid_utf8_offset(s);
  if (bad != std::string_view::npos)
    throw std::invalid_argument(what + ": invalid UTF-8 at byte offset " + std::to_string(bad));
}

// Decodes the code point at s[i] of valid UTF-8 and advances i past it.
char32_t next_code_point(std::string_view s, size_t& i) {
  const auto c = static_cast<unsigned char>(s[i++]);
  if (c < 0x80) return c;
  const int extra = c >= 0xF0 ? 3 : c >= 0xE0 ? 2 : 1;
  char32_t cp = c & (0x3F >> extra);
  for (int k = 0; k < extra; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i++]) & 0x3F);
  return cp;
}

// ---- GPT-2 byte-level alphabet ----

// Every byte gets a printable character: printable Latin-1 bytes stand for themselves, the
// others take U+0100 onwards in byte order. Tokens are spelled in these characters in
// tokenizer.json, which keeps whitespace and control bytes out of the file's token strings.
struct ByteAlphabet {
  std::array<std::string, 256> spelling;  // byte -> UTF-8 of its character
  std::array<int16_t, 0x180> byte_of;     // code point -> byte, -1 outside the alphabet

  ByteAlphabet() {
    byte_of.fill(-1);
    char32_t next_extra = 0x100;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      const char32_t cp = printable ? char32_t(b) : next_extra++;
      byte_of[cp] = static_cast<int16_t>(b);
      spelling[b] = cp < 0x80 ? std::string(1, char(cp))
                              : std::string{char(0xC0 | (cp >> 6)), char(0x80 | (cp & 0x3F))};
    }
  }

  std::string spell(std::string_view bytes) const {
    std::string out;
    for (unsigned char b : bytes) out += spelling[b];
    return out;
  }

  // The bytes a token stands for, as HF's ByteLevel decoder sees it: a spelling with any
  // character outside the alphabet (an added token such as "<|eot|>" with non-Latin text)
  // stands for its own UTF-8 bytes.
  std::optional<std::string> unspell(std::string_view spelled) const {
    std::string out;
    for (size_t i = 0; i < spelled.size();) {
      const char32_t cp = next_code_point(spelled, i);
      if (cp >= byte_of.size() || byte_of[cp] < 0) return std::nullopt;
      out += static_cast<char>(byte_of[cp]);
    }
    return out;
  }
  std::string token_bytes(std::string_view spelled) const {
    return unspell(spelled).value_or(std::string(spelled));
  }
};

const ByteAlphabet& byte_alphabet() {
  static const ByteAlphabet alphabet;
  return alphabet;
}

// ---- Pre-tokenizer: regex splits ----

struct Pcre2CodeFree {
  void operator()(pcre2_code* c) const { pcre2_code_free(c); }
};
struct Pcre2MatchDataFree {
  void operator()(pcre2_match_data* m) const { pcre2_match_data_free(m); }
};
using MatchData = std::unique_ptr<pcre2_match_data, Pcre2MatchDataFree>;

std::string pcre2_message(int code) {
  std::array<PCRE2_UCHAR, 256> buf{};
  pcre2_get_error_message(code, buf.data(), buf.size());
  return reinterpret_cast<const char*>(buf.data());
}

size_t utf8_char_length(std::string_view s, size_t i) {
  const auto c = static_cast<unsigned char>(s[i]);
  return c < 0x80 ? 1 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : 2;
}

// Unicode's White_Space characters, which Oniguruma's \s matches (HF compiles its regexes with
// Oniguruma). PCRE2's \s under UCP also matches U+180E, which Unicode 6.3 moved out of them.
constexpr const char* kWhiteSpace = R"(\t\n\x{0B}\f\r\x{20}\x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000})";

// Rewrites \s and \S as explicit White_Space classes so PCRE2 splits where HF does.
std::string with_unicode_white_space(const std::string& pattern) {
  std::string out;
  bool in_class = false;
  for (size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c == '\\' && i + 1 < pattern.size()) {
      const char e = pattern[++i];
      if (e == 's')
        out += in_class ? std::string(kWhiteSpace) : "[" + std::string(kWhiteSpace) + "]";
      else if (e == 'S' && !in_class)
        out += "[^" + std::string(kWhiteSpace) + "]";
      else if (e == 'S')
        throw std::runtime_error("split regex /" + pattern + "/: \\S inside a character class is not supported");
      else
        out += {c, e};
      continue;
    }
    if (in_class && c == '[' && i + 1 < pattern.size() && pattern[i + 1] == ':') {  // [:alpha:]
      const size_t close = pattern.find(":]", i + 2);
      const size_t end = close == std::string::npos ? pattern.size() : close + 2;
      out.append(pattern, i, end - i);
      i = end - 1;
      continue;
    }
    out += c;
    if (!in_class && c == '[') {
      in_class = true;
      if (i + 1 < pattern.size() && pattern[i + 1] == '^') out += pattern[++i];
      if (i + 1 < pattern.size() && pattern[i + 1] == ']') out += pattern[++i];  // a leading ] is literal
    } else if (in_class && c == ']') {
      in_class = false;
    }
  }
  return out;
}

// One HF "Split" with behavior Isolated: matches and the gaps between them each become a piece.
class SplitRegex {
 public:
  explicit SplitRegex(const std::string& pattern) {
    int err = 0;
    PCRE2_SIZE err_offset = 0;
    const std::string translated = with_unicode_white_space(pattern);
    code_.reset(pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()), translated.size(),
                              PCRE2_UTF | PCRE2_UCP, &err, &err_offset, nullptr));
    if (!code_)
      throw std::runtime_error("split regex /" + pattern + "/ does not compile (as /" + translated +
                               "/, at offset " + std::to_string(err_offset) + "): " + pcre2_message(err));
    pcre2_jit_compile(code_.get(), PCRE2_JIT_COMPLETE);  // on failure the interpreter runs it
  }

  MatchData make_match_data() const {
    return MatchData(pcre2_match_data_create_from_pattern(code_.get(), nullptr));
  }

  // `text` must be valid UTF-8: the UTF check is skipped because it would rescan the whole
  // subject on every match. An empty match still cuts the gap around it, as HF's splitter does.
  template <class Fn>
  void split(std::string_view text, pcre2_match_data* md, Fn&& piece) const {
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
    size_t last = 0, start = 0;
    while (start <= text.size()) {
      const int rc = pcre2_match(code_.get(), subject, text.size(), start, PCRE2_NO_UTF_CHECK, md, nullptr);
      if (rc == PCRE2_ERROR_NOMATCH) break;
      if (rc < 0) throw std::runtime_error("pre-tokenizer regex failed: " + pcre2_message(rc));
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
      const size_t begin = ov[0], end = ov[1];
      if (begin > last) piece(text.substr(last, begin - last));
      if (end > begin) piece(text.substr(begin, end - begin));
      last = end;
      if (end == text.size()) break;
      start = end > begin ? end : end + utf8_char_length(text, end);
    }
    if (last < text.size()) piece(text.substr(last));
  }

 private:
  std::unique_ptr<pcre2_code, Pcre2CodeFree> code_;
};

// A Sequence of splits: each piece of one split is split again by the next.
class PreTokenizer {
 public:
  void add_split(const std::string& pattern) { splits_.emplace_back(pattern); }

  // One per thread and call: pcre2 match data is not shareable across threads.
  std::vector<MatchData> make_match_data() const {
    std::vector<MatchData> out;
    for (const auto& s : splits_) out.push_back(s.make_match_data());
    return out;
  }

  template <class Fn>
  void for_each_piece(std::string_view text, const std::vector<MatchData>& match_data, Fn&& piece) const {
    visit(text, 0, match_data, piece);
  }
  template <class Fn>
  void for_each_piece(std::string_view text, Fn&& piece) const {
    for_each_piece(text, make_match_data(), piece);
  }

 private:
  template <class Fn>
  void visit(std::string_view text, size_t level, const std::vector<MatchData>& md, Fn& piece) const {
    if (level == splits_.size()) {
      piece(text);
      return;
    }
    splits_[level].split(text, md[level].get(), [&](std::string_view sub) { visit(sub, level + 1, md, piece); });
  }

  std::vector<SplitRegex> splits_;
};

// ---- BPE model ----

struct MergeTarget {
  int32_t rank;
  int32_t id;
};

// Scratch space reused across the pieces of one encode() call.
struct MergeWorkspace {
  struct Symbol {
    int32_t id;    // -1 once merged into its left neighbour
    int32_t prev;  // -1 at the ends
    int32_t next;
  };
  struct Candidate {
    int32_t rank;
    int32_t pos;  // index of the left symbol
    int32_t id;   // what the pair merges into, to tell whether the pair is still there
    // Lowest rank first, leftmost first among equal ranks (as HF orders its merge queue).
    bool operator<(const Candidate& o) const { return std::tie(rank, pos) > std::tie(o.rank, o.pos); }
  };
  std::vector<Symbol> symbols;
  std::vector<Candidate> queue;  // a heap
};

class BpeModel {
 public:
  BpeModel(std::array<int32_t, 256> byte_ids, std::unordered_map<uint64_t, MergeTarget> merges,
           StringMap<int32_t> whole_words)
      : byte_ids_(byte_ids), merges_(std::move(merges)), whole_words_(std::move(whole_words)) {}

  void encode_piece(std::string_view bytes, std::vector<int32_t>& out, MergeWorkspace& ws) const {
    if (auto it = whole_words_.find(bytes); it != whole_words_.end()) {
      out.push_back(it->second);
      return;
    }
    merge(bytes, ws);
    for (int32_t i = 0; i >= 0; i = ws.symbols[i].next) out.push_back(ws.symbols[i].id);
  }

 private:
  // Applies merges lowest rank first via a heap of adjacent pairs over a linked list of
  // symbols, so a long piece costs O(n log n) instead of a rescan per merge.
  void merge(std::string_view bytes, MergeWorkspace& ws) const {
    auto& sym = ws.symbols;
    auto& queue = ws.queue;
    sym.clear();
    queue.clear();
    const auto n = static_cast<int32_t>(bytes.size());
    for (int32_t i = 0; i < n; ++i)
      sym.push_back({byte_ids_[static_cast<unsigned char>(bytes[i])], i - 1, i + 1 < n ? i + 1 : -1});
    auto consider = [&](int32_t left) {
      const int32_t right = sym[left].next;
      if (right < 0) return;
      if (auto it = merges_.find(pair_key(sym[left].id, sym[right].id)); it != merges_.end()) {
        queue.push_back({it->second.rank, left, it->second.id});
        std::push_heap(queue.begin(), queue.end());
      }
    };
    for (int32_t i = 0; i + 1 < n; ++i) consider(i);
    while (!queue.empty()) {
      std::pop_heap(queue.begin(), queue.end());
      const auto top = queue.back();
      queue.pop_back();
      auto& left = sym[top.pos];
      if (left.id < 0 || left.next < 0) continue;
      auto& right = sym[left.next];
      auto it = merges_.find(pair_key(left.id, right.id));
      if (it == merges_.end() || it->second.id != top.id) continue;  // a neighbour changed since
      left.id = top.id;
      right.id = -1;
      left.next = right.next;
      if (left.next >= 0) sym[left.next].prev = top.pos;
      if (left.prev >= 0) consider(left.prev);
      consider(top.pos);
    }
  }

  std::array<int32_t, 256> byte_ids_;
  std::unordered_map<uint64_t, MergeTarget> merges_;
  // Pieces that are whole vocab tokens (only with HF's ignore_merges, as Llama 3 sets it).
  StringMap<int32_t> whole_words_;
};

// ---- tokenizer.json reading ----

void require(bool ok, const std::string& problem) {
  if (!ok) throw std::runtime_error(problem);
}

bool null_or(const json& obj, const char* key, const json& allowed) {
  auto it = obj.find(key);
  return it == obj.end() || it->is_null() || *it == allowed;
}

// Reads the pre_tokenizer: Isolated regex Splits, then a ByteLevel that only maps bytes.
PreTokenizer read_pre_tokenizer(const json& doc) {
  const json& p = doc.value("pre_tokenizer", json());
  require(p.is_object(), "pre_tokenizer is missing (only byte-level BPE is supported)");
  const json steps = p.value("type", "") == "Sequence" ? p.at("pretokenizers") : json::array({p});
  require(!steps.empty() && steps.back().value("type", "") == "ByteLevel",
          "pre_tokenizer must end with ByteLevel (only byte-level BPE is supported)");
  const json& byte_level = steps.back();
  require(!byte_level.value("add_prefix_space", false), "ByteLevel pre_tokenizer with add_prefix_space is not supported");
  require(!byte_level.value("use_regex", true), "ByteLevel pre_tokenizer with use_regex is not supported");
  PreTokenizer pre;
  for (size_t i = 0; i + 1 < steps.size(); ++i) {
    const json& s = steps[i];
    const std::string type = s.value("type", "");
    require(type == "Split", "pre_tokenizer " + type + " is not supported");
    require(s.at("pattern").contains("Regex"), "Split pre_tokenizer with a String pattern is not supported");
    require(s.value("behavior", "") == "Isolated", "Split behavior " + s.value("behavior", "") + " is not supported");
    require(!s.value("invert", false), "Split with invert true is not supported");
    pre.add_split(s.at("pattern").at("Regex").get<std::string>());
  }
  return pre;
}

void check_model_options(const json& model) {
  require(model.value("type", "") == "BPE", "model type " + model.value("type", "?") + " is not supported (only BPE)");
  require(null_or(model, "dropout", json()), "BPE dropout is not supported");
  require(null_or(model, "unk_token", json()), "BPE unk_token is not supported");
  require(null_or(model, "continuing_subword_prefix", ""), "BPE continuing_subword_prefix is not supported");
  require(null_or(model, "end_of_word_suffix", ""), "BPE end_of_word_suffix is not supported");
  require(null_or(model, "byte_fallback", false), "BPE byte_fallback is not supported");
}

void check_unsupported_sections(const json& doc) {
  require(doc.value("truncation", json()).is_null(), "truncation is not supported");
  require(doc.value("padding", json()).is_null(), "padding is not supported");
  const json& decoder = doc.value("decoder", json());
  require(decoder.is_object() && decoder.value("type", "") == "ByteLevel",
          "decoder " + (decoder.is_object() ? decoder.value("type", "?") : decoder.dump()) +
              " is not supported (only ByteLevel)");
}

std::pair<std::string, std::string> merge_parts(const json& merge) {
  if (merge.is_array() && merge.size() == 2) return {merge[0].get<std::string>(), merge[1].get<std::string>()};
  const std::string text = merge.get<std::string>();
  const size_t space = text.find(' ');
  require(space != std::string::npos && text.find(' ', space + 1) == std::string::npos,
          "merge \"" + text + "\" is not two tokens separated by one space");
  return {text.substr(0, space), text.substr(space + 1)};
}

// What a tokenizer.json's document holds besides the model, written back as it was read.
const char* const kSections[] = {"version", "truncation", "padding", "added_tokens",
                                 "normalizer", "pre_tokenizer", "post_processor", "decoder"};

ordered_json make_document(const json& sections, ordered_json model) {
  ordered_json doc;
  for (const char* key : kSections) doc[key] = sections.value(key, json());
  doc["model"] = std::move(model);
  return doc;
}

// HF accepts merges as "a b" strings and, since 0.20, as [a, b] pairs; the string form is
// readable by every version, so it is used unless a token holds a space.
ordered_json merges_json(const std::vector<std::pair<std::string, std::string>>& merges) {
  const bool spaces = std::any_of(merges.begin(), merges.end(), [](const auto& m) {
    return m.first.find(' ') != std::string::npos || m.second.find(' ') != std::string::npos;
  });
  ordered_json out = ordered_json::array();
  for (const auto& [a, b] : merges) out.push_back(spaces ? ordered_json::array({a, b}) : ordered_json(a + " " + b));
  return out;
}

ordered_json model_json(const std::vector<std::string>& vocab, const std::vector<std::pair<std::string, std::string>>& merges,
                        bool ignore_merges) {
  ordered_json v = ordered_json::object();
  // Appends to ordered_map's vector directly: its operator[] searches linearly, which is
  // quadratic over a 128k vocab, and the spellings are known to be distinct.
  auto& entries = static_cast<ordered_json::object_t::Container&>(v.get_ref<ordered_json::object_t&>());
  for (size_t id = 0; id < vocab.size(); ++id)
    if (!vocab[id].empty()) entries.emplace_back(vocab[id], id);
  return ordered_json{{"type", "BPE"},
                      {"dropout", nullptr},
                      {"unk_token", nullptr},
                      {"continuing_subword_prefix", nullptr},
                      {"end_of_word_suffix", nullptr},
                      {"fuse_unk", false},
                      {"byte_fallback", false},
                      {"ignore_merges", ignore_merges},
                      {"vocab", std::move(v)},
                      {"merges", merges_json(merges)}};
}

}  // namespace

struct Tokenizer::Impl {
  std::vector<std::string> vocab;             // id -> model vocab spelling ("" if not in the model vocab)
  std::vector<std::optional<std::string>> bytes;  // id -> what it decodes to (model and added tokens)
  StringMap<int32_t> ids;                     // spelling -> id, added tokens over the model vocab as in HF
  std::vector<std::pair<int32_t, int32_t>> merges;  // by rank
  bool ignore_merges = false;
  bool rank_by_merged_token = false;  // tiktoken rank files
  TextNormalizer normalizer;
  PreTokenizer pre_tokenizer;
  std::optional<BpeModel> model;
  AddedTokenMatcher raw_added;         // added tokens matched before normalization
  AddedTokenMatcher normalized_added;  // those HF marks "normalized": matched after it
  json sections;

  void set_token(int32_t id, std::string spelling, std::string decoded) {
    if (static_cast<size_t>(id) >= bytes.size()) bytes.resize(id + 1);
    bytes[id] = std::move(decoded);
    ids[std::move(spelling)] = id;
  }

  void read_vocab(const json& model) {
    const auto& alphabet = byte_alphabet();
    for (const auto& [spelling, id_json] : model.at("vocab").items()) {
      const auto id = id_json.get<int64_t>();
      require(id >= 0 && id < INT32_MAX && !spelling.empty(), "vocab entry \"" + spelling + "\" has a bad id or spelling");
      if (static_cast<size_t>(id) >= vocab.size()) vocab.resize(id + 1);
      require(vocab[id].empty(), "vocab id " + std::to_string(id) + " is used twice");
      vocab[id] = spelling;
      set_token(static_cast<int32_t>(id), spelling, alphabet.token_bytes(spelling));
    }
  }

  std::array<int32_t, 256> byte_ids() const {
    std::array<int32_t, 256> out{};
    for (int b = 0; b < 256; ++b) {
      const std::string& s = byte_alphabet().spelling[b];
      auto it = ids.find(s);
      require(it != ids.end(), "vocab lacks the byte-level token \"" + s + "\" for byte " + std::to_string(b));
      out[b] = it->second;
    }
    return out;
  }

  std::unordered_map<uint64_t, MergeTarget> read_merges(const json& model) {
    std::unordered_map<uint64_t, MergeTarget> table;
    const json& list = model.at("merges");
    table.reserve(list.size());
    auto id_of = [&](const std::string& s, size_t rank) {
      auto it = ids.find(s);
      require(it != ids.end(), "merge " + std::to_string(rank) + " uses \"" + s + "\", which is not in the vocab");
      return it->second;
    };
    for (size_t rank = 0; rank < list.size(); ++rank) {
      const auto [a, b] = merge_parts(list[rank]);
      const int32_t left = id_of(a, rank), right = id_of(b, rank), merged = id_of(a + b, rank);
      // A later duplicate of a pair overrides the earlier one, as in HF's merge map. tiktoken
      // ranks a pair by the token it makes, so pairs making one token tie (leftmost wins).
      table[pair_key(left, right)] = {rank_by_merged_token ? merged : static_cast<int32_t>(rank), merged};
      merges.emplace_back(left, right);
    }
    return table;
  }

  StringMap<int32_t> whole_words() const {
    StringMap<int32_t> out;
    if (!ignore_merges) return out;
    for (size_t id = 0; id < vocab.size(); ++id)
      if (auto b = byte_alphabet().unspell(vocab[id]); !vocab[id].empty() && b) out.emplace(std::move(*b), id);
    return out;
  }

  void read_added_tokens(const json& doc) {
    for (const json& t : doc.value("added_tokens", json::array())) {
      const auto id = t.at("id").get<int64_t>();
      const auto content = t.at("content").get<std::string>();
      require(id >= 0 && id < INT32_MAX && !content.empty(), "added token \"" + content + "\" has a bad id or content");
      for (const char* option : {"single_word", "lstrip", "rstrip"})
        require(!t.value(option, false), "added token \"" + content + "\" with " + option + " true is not supported");
      set_token(static_cast<int32_t>(id), content, byte_alphabet().token_bytes(content));
      // HF's default: special tokens are matched in the raw text, others after normalization.
      const bool normalized = t.value("normalized", !t.value("special", false));
      (normalized && !normalizer.is_identity() ? normalized_added : raw_added).add(content, static_cast<int32_t>(id));
    }
  }

  explicit Impl(const json& doc, bool tiktoken_ranks = false) : rank_by_merged_token(tiktoken_ranks) {
    require(doc.is_object(), "not a JSON object");
    normalizer = TextNormalizer::from_json(doc.value("normalizer", json()));
    check_unsupported_sections(doc);
    pre_tokenizer = read_pre_tokenizer(doc);
    const json& m = doc.at("model");
    check_model_options(m);
    ignore_merges = m.value("ignore_merges", false);
    read_vocab(m);
    auto merge_table = read_merges(m);  // before added tokens: merges name model tokens only
    model.emplace(byte_ids(), std::move(merge_table), whole_words());
    read_added_tokens(doc);
    for (const char* key : kSections)
      if (doc.contains(key)) sections[key] = doc[key];
  }

  // The first of `names` that the tokenizer has (the families spell BOS and EOS differently).
  std::optional<int32_t> first_token_of(std::initializer_list<std::string_view> names) const {
    for (auto name : names)
      if (auto it = ids.find(name); it != ids.end()) return it->second;
    return std::nullopt;
  }

  struct Scratch {
    std::vector<MatchData> match_data;
    MergeWorkspace merge;
  };

  // Text with no added tokens in it: normalized already, split, then BPE per piece.
  void encode_normalized(std::string_view text, Scratch& scratch, std::vector<int32_t>& out) const {
    pre_tokenizer.for_each_piece(text, scratch.match_data,
                                 [&](std::string_view piece) { model->encode_piece(piece, out, scratch.merge); });
  }

  // As HF: added tokens are cut out of the raw text first, the gaps normalized, and tokens
  // marked "normalized" cut out of the normalized gaps.
  void encode(std::string_view text, bool match_added, std::vector<int32_t>& out) const {
    Scratch scratch{pre_tokenizer.make_match_data(), {}};
    auto token = [&](int32_t id) { out.push_back(id); };
    auto plain = [&](std::string_view normalized) {
      if (match_added)
        normalized_added.split(normalized, [&](std::string_view gap) { encode_normalized(gap, scratch, out); }, token);
      else
        encode_normalized(normalized, scratch, out);
    };
    auto gap = [&](std::string_view raw) {
      if (normalizer.is_identity()) return plain(raw);
      const std::string normalized = normalizer.apply(raw);
      plain(normalized);
    };
    if (match_added)
      raw_added.split(text, gap, token);
    else
      gap(text);
  }
};

Tokenizer make_tokenizer(std::shared_ptr<const Tokenizer::Impl> impl) { return Tokenizer(std::move(impl)); }

namespace {
json trained_sections(const std::vector<std::string>& specials, size_t first_special_id);

// A rank file as the tokenizer.json it stands for: Llama 3's regex and special tokens, every
// split of a token into two tokens as a merge, whole pieces looked up first (as tiktoken does).
json tiktoken_document(const std::string& text) {
  const auto tokens = read_tiktoken_ranks(text);
  std::vector<std::string> vocab;
  for (const auto& t : tokens) vocab.push_back(byte_alphabet().spell(t));
  std::vector<std::pair<std::string, std::string>> merges;
  for (const auto& [a, b] : tiktoken_merges(tokens)) merges.emplace_back(vocab[a], vocab[b]);
  return make_document(trained_sections(llama3_special_tokens(), vocab.size()), model_json(vocab, merges, true));
}
}  // namespace

namespace {

// The first non-blank line of a tiktoken rank file: "<base64 token> <rank>".
bool starts_like_rank_file(std::string_view text) {
  const auto start = text.find_first_not_of(" \t\r\n");
  if (start == std::string_view::npos) return false;
  auto line = text.substr(start, text.find('\n', start) - start);
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  const auto space = line.find(' ');
  if (space == 0 || space == std::string_view::npos || space + 1 == line.size()) return false;
  static constexpr std::string_view kBase64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=";
  return line.substr(0, space).find_first_not_of(kBase64) == std::string_view::npos &&
         line.substr(space + 1).find_first_not_of("0123456789") == std::string_view::npos;
}

}  // namespace

Tokenizer Tokenizer::load(const std::string& path) {
  const std::string text = read_file(path, "tokenizer file");
  if (is_tiktoken_file(text) && !starts_like_rank_file(text))
    throw std::runtime_error("tokenizer file '" + path +
                             "' is neither a tokenizer.json (JSON) nor a tiktoken rank file (lines of "
                             "'<base64 token> <rank>')");
  try {
    if (is_tiktoken_file(text)) return make_tokenizer(std::make_shared<const Impl>(tiktoken_document(text), true));
    return make_tokenizer(std::make_shared<const Impl>(json::parse(text)));
  } catch (const std::exception& e) {
    throw std::runtime_error("tokenizer file '" + path + "': " + e.what());
  }
}

namespace {

// Shared by encode and encode_ordinary; a template so that it can take the private Impl.
template <class Impl>
std::vector<int32_t> encode_checked(const Impl& impl, std::string_view text, bool added_tokens) {
  require_utf8(text, "text to encode");
  std::vector<int32_t> out;
  out.reserve(text.size() / 3);
  impl.encode(text, added_tokens, out);
  return out;
}

}  // namespace

std::vector<int32_t> Tokenizer::encode(std::string_view text) const { return encode_checked(*impl_, text, true); }

std::vector<int32_t> Tokenizer::encode_ordinary(std::string_view text) const {
  return encode_checked(*impl_, text, false);
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string out;
  for (int32_t id : ids) {
    if (id < 0 || static_cast<size_t>(id) >= impl_->bytes.size() || !impl_->bytes[id])
      throw std::out_of_range("token id " + std::to_string(id) + " is not in the vocabulary (size " +
                              std::to_string(vocab_size()) + ")");
    out += *impl_->bytes[id];
  }
  return out;
}

int64_t Tokenizer::vocab_size() const { return static_cast<int64_t>(impl_->bytes.size()); }

std::vector<std::pair<int64_t, int64_t>> Tokenizer::unused_ids() const {
  std::vector<std::pair<int64_t, int64_t>> ranges;
  const auto& bytes = impl_->bytes;
  for (int64_t id = 0; id < static_cast<int64_t>(bytes.size()); ++id) {
    if (bytes[id]) continue;
    if (!ranges.empty() && ranges.back().second == id - 1) ranges.back().second = id;
    else ranges.emplace_back(id, id);
  }
  return ranges;
}

std::string unused_ids_note(const Tokenizer& tokenizer, const std::string& path) {
  const auto ranges = tokenizer.unused_ids();
  if (ranges.empty()) return {};
  int64_t unused = 0;
  for (const auto& [first, last] : ranges) unused += last - first + 1;
  std::string shown;
  constexpr size_t kShown = 5;
  for (size_t i = 0; i < std::min(ranges.size(), kShown); ++i) {
    const auto& [first, last] = ranges[i];
    shown += (i ? ", " : "") + std::to_string(first) + (last > first ? "-" + std::to_string(last) : "");
  }
  if (ranges.size() > kShown) shown += ", ... (" + std::to_string(ranges.size()) + " ranges)";
  return "tokenizer " + path + " has ids 0-" + std::to_string(tokenizer.vocab_size() - 1) + ", of which " +
         std::to_string(unused) + " name no token (" + shown + "); the model's vocabulary still counts them";
}
std::optional<int32_t> Tokenizer::bos_id() const {
  return impl_->first_token_of({"<|begin_of_text|>", "<\uff5cbegin\u2581of\u2581sentence\uff5c>", "<s>"});
}
std::optional<int32_t> Tokenizer::eos_id() const {
  return impl_->first_token_of({"<|end_of_text|>", "<\uff5cend\u2581of\u2581sentence\uff5c>", "<|endoftext|>", "</s>"});
}

std::optional<int32_t> Tokenizer::token_id(std::string_view token) const {
  auto it = impl_->ids.find(token);
  if (it == impl_->ids.end()) return std::nullopt;
  return it->second;
}

void Tokenizer::save(const std::string& path) const {
  std::vector<std::pair<std::string, std::string>> merges;
  for (const auto& [a, b] : impl_->merges) merges.emplace_back(impl_->vocab[a], impl_->vocab[b]);
  const auto doc = make_document(impl_->sections, model_json(impl_->vocab, merges, impl_->ignore_merges));
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << doc.dump(2) << '\n';
  if (!out.flush()) throw std::runtime_error("tokenizer file '" + path + "' cannot be written");
}

// ---- training ----

namespace {

// Unique pre-tokenized pieces of the files with their counts, sorted so training does not
// depend on hash order.
std::vector<std::pair<std::string, int64_t>> count_pieces(const std::vector<std::string>& files) {
  PreTokenizer pre;
  pre.add_split(kLlama3SplitRegex);
  std::unordered_map<std::string, int64_t> counts;
  for (const auto& path : files) {
    const std::string text = read_file(path, "training file");
    require_utf8(text, "training file '" + path + "'");
    pre.for_each_piece(text, [&](std::string_view piece) { ++counts[std::string(piece)]; });
  }
  std::vector<std::pair<std::string, int64_t>> sorted(counts.begin(), counts.end());
  std::sort(sorted.begin(), sorted.end());
  return sorted;
}

// Classic BPE training: repeatedly merge the most frequent adjacent pair, counting each piece
// once per occurrence. Pair counts are updated only for the words a merge touches, so each
// step costs the size of those words, not of the corpus.
class BpeTrainer {
 public:
  explicit BpeTrainer(const std::vector<std::pair<std::string, int64_t>>& pieces) {
    for (int b = 0; b < 256; ++b) add_token(std::string(1, char(b)));
    for (const auto& [text, count] : pieces) {
      Word w{{}, count};
      for (unsigned char c : text) w.symbols.push_back(c);
      words_.push_back(std::move(w));
    }
    std::vector<uint64_t> changed;
    for (size_t w = 0; w < words_.size(); ++w) count_pairs(w, +1, changed);
    queue_changed(changed);
  }

  // Merges until there are `num_tokens` distinct tokens or no pair is left.
  void run(size_t num_tokens) {
    while (tokens_.size() < num_tokens) {
      auto best = pop_best();
      if (!best) break;
      apply(best->first, best->second);
    }
  }

  const std::vector<std::string>& tokens() const { return tokens_; }  // id -> bytes
  const std::vector<std::pair<int32_t, int32_t>>& merges() const { return merges_; }

 private:
  struct Word {
    std::vector<int32_t> symbols;
    int64_t count;
  };
  struct Entry {
    int64_t count;
    int32_t left, right;
  };

  int32_t add_token(std::string bytes) {
    // Two merges can spell the same bytes ("ab"+"c", "a"+"bc"); they share one token, as in HF.
    auto [it, added] = token_ids_.emplace(bytes, static_cast<int32_t>(tokens_.size()));
    if (added) tokens_.push_back(std::move(bytes));
    return it->second;
  }

  void count_pairs(size_t w, int sign, std::vector<uint64_t>& changed) {
    const auto& s = words_[w].symbols;
    for (size_t i = 0; i + 1 < s.size(); ++i) {
      const uint64_t k = pair_key(s[i], s[i + 1]);
      pair_counts_[k] += sign * words_[w].count;
      if (sign > 0) words_with_[k].push_back(static_cast<int32_t>(w));
      changed.push_back(k);
    }
  }

  void queue_changed(std::vector<uint64_t>& changed) {
    std::sort(changed.begin(), changed.end());
    changed.erase(std::unique(changed.begin(), changed.end()), changed.end());
    for (uint64_t k : changed) {
      auto it = pair_counts_.find(k);
      if (it->second > 0)
        queue_.push({it->second, int32_t(k >> 32), int32_t(k & 0xFFFFFFFF)});
      else
        pair_counts_.erase(it);
    }
  }

  // The most frequent pair, skipping queue entries whose count has changed since.
  std::optional<std::pair<int32_t, int32_t>> pop_best() {
    while (!queue_.empty()) {
      const Entry e = queue_.top();
      queue_.pop();
      auto it = pair_counts_.find(pair_key(e.left, e.right));
      if (it != pair_counts_.end() && it->second == e.count) return std::pair{e.left, e.right};
    }
    return std::nullopt;
  }

  static bool replace_pairs(std::vector<int32_t>& s, int32_t left, int32_t right, int32_t merged) {
    size_t out = 0;
    bool any = false;
    for (size_t i = 0; i < s.size(); ++i) {
      if (i + 1 < s.size() && s[i] == left && s[i + 1] == right) {
        s[out++] = merged;
        ++i;
        any = true;
      } else {
        s[out++] = s[i];
      }
    }
    s.resize(out);
    return any;
  }

  void apply(int32_t left, int32_t right) {
    const int32_t merged = add_token(tokens_[left] + tokens_[right]);
    merges_.emplace_back(left, right);
    auto node = words_with_.extract(pair_key(left, right));
    std::vector<int32_t> words = std::move(node.mapped());  // may hold stale and repeated entries
    std::sort(words.begin(), words.end());
    words.erase(std::unique(words.begin(), words.end()), words.end());
    std::vector<uint64_t> changed;
    for (int32_t w : words) {
      std::vector<int32_t> updated = words_[w].symbols;
      if (!replace_pairs(updated, left, right, merged)) continue;
      count_pairs(w, -1, changed);
      words_[w].symbols = std::move(updated);
      count_pairs(w, +1, changed);
    }
    queue_changed(changed);
  }

  // Higher count first; among equal counts the pair whose token bytes sort first.
  struct Order {
    const std::vector<std::string>* tokens;
    bool operator()(const Entry& a, const Entry& b) const {
      if (a.count != b.count) return a.count < b.count;
      const auto& t = *tokens;
      return std::tie(t[a.left], t[a.right]) > std::tie(t[b.left], t[b.right]);
    }
  };

  std::vector<std::string> tokens_;
  std::unordered_map<std::string, int32_t> token_ids_;
  std::vector<Word> words_;
  std::unordered_map<uint64_t, int64_t> pair_counts_;
  std::unordered_map<uint64_t, std::vector<int32_t>> words_with_;
  std::priority_queue<Entry, std::vector<Entry>, Order> queue_{Order{&tokens_}};
  std::vector<std::pair<int32_t, int32_t>> merges_;
};

// The non-model sections of a trained tokenizer.json, laid out as Llama 3's.
json trained_sections(const std::vector<std::string>& specials, size_t first_special_id) {
  json added = json::array();
  for (size_t i = 0; i < specials.size(); ++i)
    added.push_back({{"id", first_special_id + i},
                     {"content", specials[i]},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", false},
                     {"special", true}});
  const json split = {{"type", "Split"}, {"pattern", {{"Regex", kLlama3SplitRegex}}}, {"behavior", "Isolated"}, {"invert", false}};
  const json byte_level = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", false}};
  return {{"version", "1.0"},
          {"truncation", nullptr},
          {"padding", nullptr},
          {"added_tokens", std::move(added)},
          {"normalizer", nullptr},
          {"pre_tokenizer", {{"type", "Sequence"}, {"pretokenizers", {split, byte_level}}}},
          {"post_processor", nullptr},
          {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}}}};
}

void check_train_options(const BpeTrainOptions& options) {
  const auto& specials = options.special_tokens;
  if (options.vocab_size < 256 + static_cast<int64_t>(specials.size()))
    throw std::invalid_argument("vocab size " + std::to_string(options.vocab_size) +
                                " is below 256 byte tokens + " + std::to_string(specials.size()) + " special tokens");
  for (size_t i = 0; i < specials.size(); ++i)
    if (specials[i].empty() || std::find(specials.begin(), specials.begin() + i, specials[i]) != specials.begin() + i)
      throw std::invalid_argument("special tokens must be non-empty and distinct");
}

}  // namespace

Tokenizer train_bpe(const std::vector<std::string>& files, const BpeTrainOptions& options) {
  check_train_options(options);
  BpeTrainer trainer(count_pieces(files));
  trainer.run(options.vocab_size - options.special_tokens.size());
  const auto& alphabet = byte_alphabet();
  std::vector<std::string> vocab;
  for (const auto& t : trainer.tokens()) vocab.push_back(alphabet.spell(t));
  std::vector<std::pair<std::string, std::string>> merges;
  for (const auto& [a, b] : trainer.merges()) merges.emplace_back(vocab[a], vocab[b]);
  // Built through the same reader as load(), so a trained tokenizer equals its saved file.
  const auto doc = make_document(trained_sections(options.special_tokens, vocab.size()), model_json(vocab, merges, false));
  return make_tokenizer(std::make_shared<const Tokenizer::Impl>(json(doc)));
}

}  // namespace troupe::data
