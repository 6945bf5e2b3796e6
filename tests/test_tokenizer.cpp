// Byte-level BPE tokenizer: training, encode/decode, the bundled tokenizer, tokenizer.json
// round trips and error reporting. Agreement with Hugging Face `tokenizers` on a large varied
// corpus is checked by tests/oracle/tokenizer_oracle.py; the HF ids here are spot checks.
#include <catch2/catch.hpp>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "data/tokenizer.h"
#include "test_support.h"

using troupe::data::BpeTrainOptions;
using troupe::data::Tokenizer;
using troupe::data::train_bpe;

namespace {

const char* const kBundled = "data/kjv/tokenizer.json";

using Scratch = troupe::testing::TempDir;

// The message of the E that f throws (another exception type propagates and fails the test).
template <class E, class F>
std::string thrown_message(F&& f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  }
  FAIL("no exception thrown");
  return {};
}

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream buf;
  buf << in.rdbuf();
  return buf.str();
}

const std::vector<std::string>& varied_texts() {
  static const std::vector<std::string> texts{
      "The quick brown fox jumps over the lazy dog. It's, don't, WE'RE, they'll.",
      "Fran\u00e7ais: \u00e0 l'\u00e9cole, na\u00efve c\u0153ur; Stra\u00dfe; e\u0301 (combining)",
      "\u4e2d\u6587\u5206\u8bcd\uff0c\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8\u3001\ud55c\uad6d\uc5b4 \ud14d\uc2a4\ud2b8",
      "Emoji \U0001f600\U0001f44d\U0001f3fd \U0001f468\u200d\U0001f469\u200d\U0001f467 \U0001f1fa\U0001f1f8!",
      "   spaces   runs\t\ttabs \t\n\n\nnewlines\r\n\r\nCRLF   \n  trailing   ",
      "Digits 0 12 123 1234 1234567 3.14159 \u0663\u0664 \uff11\uff12 x\u00b2",
      "\u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac \u0420\u0443\u0441\u0441\u043a\u0438\u0439 \u05e2\u05d1\u05e8\u05d9\u05ea "
      "\u0627\u0644\u0639\u0631\u0628\u064a\u0629 \u0939\u093f\u0928\u094d\u0926\u0940",
      "odd\u00a0spaces\u3000and\u2028separators\u0085here\u180e",
      std::string("control\x01\x1b[0m and a NUL \0 inside", 31),
      "",
      "a",
  };
  return texts;
}

void require_round_trips(const Tokenizer& tok) {
  for (const auto& text : varied_texts()) {
    INFO("text: " << text);
    CHECK(tok.decode(tok.encode(text)) == text);
  }
}

std::string training_text() {
  std::string text;
  for (int i = 0; i < 40; ++i)
    for (const auto& t : varied_texts()) text += t + "\n\n";
  return text;
}

}  // namespace

TEST_CASE("training is deterministic and gives the requested vocabulary", "[tokenizer]") {
  Scratch scratch;
  const auto corpus = scratch.write("corpus.txt", training_text());
  BpeTrainOptions options;
  options.vocab_size = 320;
  const auto a = train_bpe({corpus}, options), b = train_bpe({corpus}, options);
  a.save(scratch.write("a.json", ""));
  b.save(scratch.write("b.json", ""));
  REQUIRE(slurp(scratch.file("a.json")) == slurp(scratch.file("b.json")));

  CHECK(a.vocab_size() == 320);
  CHECK(a.bos_id() == 318);  // the specials take the last ids
  CHECK(a.eos_id() == 319);
  require_round_trips(a);
  // What was trained is what its file holds.
  const auto reloaded = Tokenizer::load(scratch.file("a.json"));
  for (const auto& text : varied_texts()) CHECK(reloaded.encode(text) == a.encode(text));
}

TEST_CASE("training rejects too small a vocabulary and invalid UTF-8", "[tokenizer]") {
  Scratch scratch;
  BpeTrainOptions options;
  options.vocab_size = 257;
  CHECK_THROWS_AS(train_bpe({scratch.write("ok.txt", "text")}, options), std::invalid_argument);
  const auto bad = scratch.write("bad.txt", "ok\xc3(");
  CHECK_THAT(thrown_message<std::invalid_argument>([&] { train_bpe({bad}, BpeTrainOptions{}); }),
             Catch::Contains(bad) && Catch::Contains("offset 2"));
}

TEST_CASE("the bundled tokenizer", "[tokenizer]") {
  const auto tok = Tokenizer::load(kBundled);
  CHECK(tok.vocab_size() == 2048);
  CHECK(tok.bos_id() == 2046);
  CHECK(tok.eos_id() == 2047);
  CHECK(tok.token_id("<|begin_of_text|>") == tok.bos_id());
  CHECK(tok.token_id("\u0120the").has_value());  // "Ġthe": spelled as in tokenizer.json
  CHECK_FALSE(tok.token_id("no such token").has_value());
  // Ids from HF tokenizers on the same file.
  CHECK(tok.encode("In the beginning God created the heaven and the earth.") ==
        std::vector<int32_t>{1150, 258, 1803, 1250, 387, 280, 559, 283, 258, 739, 267, 258, 623, 46});
  require_round_trips(tok);

  SECTION("compresses its own corpus") {
    const std::string kjv = slurp("data/kjv/kjv.txt");
    REQUIRE(kjv.size() > 1000000);
    const auto ids = tok.encode(kjv);
    CHECK(ids.size() < kjv.size() / 3);
    CHECK(tok.decode(ids) == kjv);
  }
  SECTION("saving it again reproduces the file byte for byte") {
    Scratch scratch;
    const auto copy = scratch.write("copy.json", "");
    tok.save(copy);
    CHECK(slurp(copy) == slurp(kBundled));
  }
  SECTION("is the tokenizer `troupe tokenizer train` makes from the corpus") {
    Scratch scratch;
    const auto fresh = scratch.write("fresh.json", "");
    train_bpe({"data/kjv/kjv.txt"}, BpeTrainOptions{}).save(fresh);
    CHECK(slurp(fresh) == slurp(kBundled));
  }
}

TEST_CASE("added-token text becomes the token, as in HF; encode_ordinary keeps it plain text", "[tokenizer]") {
  const auto tok = Tokenizer::load(kBundled);
  const std::string text = "a<|end_of_text|>b <|begin_of_text|>";
  const auto ids = tok.encode(text);
  auto expected = tok.encode("a");
  expected.push_back(*tok.eos_id());
  for (int32_t id : tok.encode("b ")) expected.push_back(id);
  expected.push_back(*tok.bos_id());
  CHECK(ids == expected);
  const auto plain = tok.encode_ordinary(text);
  CHECK(std::find(plain.begin(), plain.end(), *tok.eos_id()) == plain.end());
  CHECK(tok.decode(ids) == text);
  CHECK(tok.decode(plain) == text);
  CHECK(tok.decode({*tok.bos_id(), *tok.eos_id()}) == "<|begin_of_text|><|end_of_text|>");
}

TEST_CASE("an NFC normalizer composes before splitting (Qwen3's)", "[tokenizer]") {
  auto doc = nlohmann::json::parse(slurp(kBundled));
  doc["normalizer"] = {{"type", "NFC"}};
  Scratch scratch;
  const auto nfc = Tokenizer::load(scratch.write("nfc.json", doc.dump()));
  const auto plain = Tokenizer::load(kBundled);
  CHECK(nfc.encode("caf\u0065\u0301 \u212b") == plain.encode("caf\u00e9 \u00c5"));
  CHECK(plain.encode("caf\u0065\u0301") != plain.encode("caf\u00e9"));
  CHECK(nfc.encode("plain ascii") == plain.encode("plain ascii"));
}

TEST_CASE("a tiktoken rank file encodes as the tokenizer.json it was made from", "[tokenizer]") {
  // The bundled tokenizer's ranks are its ids (bytes first, then merges in order), so its
  // rank file is a tiktoken tokenizer; Llama 3's special tokens take the next ids, 2046 on.
  const auto json_tok = Tokenizer::load(kBundled);
  std::string ranks;
  const char* b64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  for (int32_t id = 0; id < 2046; ++id) {
    const std::string bytes = json_tok.decode({id});
    std::string enc;
    for (size_t i = 0; i < bytes.size(); i += 3) {
      uint32_t n = uint32_t(uint8_t(bytes[i])) << 16;
      if (i + 1 < bytes.size()) n |= uint32_t(uint8_t(bytes[i + 1])) << 8;
      if (i + 2 < bytes.size()) n |= uint8_t(bytes[i + 2]);
      enc += b64[n >> 18];
      enc += b64[(n >> 12) & 63];
      enc += i + 1 < bytes.size() ? b64[(n >> 6) & 63] : '=';
      enc += i + 2 < bytes.size() ? b64[n & 63] : '=';
    }
    ranks += enc + " " + std::to_string(id) + "\n";
  }
  Scratch scratch;
  const auto tik = Tokenizer::load(scratch.write("tokenizer.model", ranks));
  CHECK(tik.vocab_size() == 2046 + 256);
  CHECK(tik.bos_id() == 2046);
  CHECK(tik.token_id("<|eot_id|>") == 2046 + 9);
  for (const auto& text : varied_texts()) CHECK(tik.encode(text) == json_tok.encode(text));
  CHECK(tik.encode(slurp("data/kjv/kjv.txt").substr(0, 200000)) == json_tok.encode(slurp("data/kjv/kjv.txt").substr(0, 200000)));

  const auto bad = scratch.write("bad.model", "IQ== 0\nIg== 2\n");
  CHECK_THROWS_WITH(Tokenizer::load(bad), Catch::Contains("line 2") && Catch::Contains("rank 2"));
}

TEST_CASE("merges load as \"a b\" strings and as [a, b] pairs alike", "[tokenizer]") {
  auto doc = nlohmann::json::parse(slurp(kBundled));
  for (auto& m : doc["model"]["merges"]) {
    const auto s = m.get<std::string>();
    m = nlohmann::json::array({s.substr(0, s.find(' ')), s.substr(s.find(' ') + 1)});
  }
  Scratch scratch;
  const auto pairs = Tokenizer::load(scratch.write("pairs.json", doc.dump()));
  const auto strings = Tokenizer::load(kBundled);
  for (const auto& text : varied_texts()) CHECK(pairs.encode(text) == strings.encode(text));
}

TEST_CASE("errors name what is wrong", "[tokenizer]") {
  const auto tok = Tokenizer::load(kBundled);
  using Catch::Contains;
  CHECK_THAT(thrown_message<std::out_of_range>([&] { tok.decode({5, 2048}); }), Contains("2048"));
  CHECK_THAT(thrown_message<std::out_of_range>([&] { tok.decode({-1}); }), Contains("-1"));
  CHECK_THAT(thrown_message<std::invalid_argument>([&] { tok.encode("ok \xe2\x82 broken"); }), Contains("offset 3"));
  CHECK_THROWS_AS(tok.encode("\xed\xa0\x80"), std::invalid_argument);  // a UTF-16 surrogate
  CHECK_THROWS_AS(tok.encode("\xc0\xaf"), std::invalid_argument);      // overlong

  Scratch scratch;
  const auto missing = scratch.file("missing.json");
  CHECK_THAT(thrown_message<std::runtime_error>([&] { Tokenizer::load(missing); }), Contains(missing));
  const auto malformed = scratch.write("malformed.json", "{\"model\": [");
  CHECK_THAT(thrown_message<std::runtime_error>([&] { Tokenizer::load(malformed); }), Contains(malformed));

  auto doc = nlohmann::json::parse(slurp(kBundled));
  doc["normalizer"] = {{"type", "Lowercase"}};
  const auto lower = scratch.write("lower.json", doc.dump());
  CHECK_THROWS_WITH(Tokenizer::load(lower), Contains(lower) && Contains("normalizer Lowercase"));
  doc["normalizer"] = nullptr;
  doc["model"]["merges"].push_back("Ġthe nosuchtoken");
  const auto bad_merge = scratch.write("bad_merge.json", doc.dump());
  CHECK_THROWS_WITH(Tokenizer::load(bad_merge), Contains("nosuchtoken"));
}

TEST_CASE("a file that is neither tokenizer.json nor a rank file is named as such", "[tokenizer]") {
  troupe::testing::TempDir dir;
  std::string noise(3000, '\0');
  uint32_t x = 12345;
  for (auto& c : noise) c = static_cast<char>((x = x * 1664525u + 1013904223u) >> 24);
  noise[0] = '\x8f';  // not '{', not base64: no reading of it as either could start
  const auto path = dir.write("tokenizer.json", noise);
  CHECK_THROWS_WITH(troupe::data::Tokenizer::load(path),
                    Catch::Contains("'" + path + "' is neither a tokenizer.json (JSON) nor a tiktoken rank file"));
  // A rank file with one bad line later still says which line.
  const auto ranks = dir.write("ranks.model", "IQ== 0\nIg== 1\nnot a rank line\n");
  CHECK_THROWS_WITH(troupe::data::Tokenizer::load(ranks), Catch::Contains("line 3"));
}

TEST_CASE("a tokenizer whose ids have holes is reported with its size and the holes", "[tokenizer]") {
  const auto bundled = Tokenizer::load(kBundled);
  CHECK(bundled.unused_ids().empty());
  CHECK(troupe::data::unused_ids_note(bundled, kBundled).empty());
  // The two added tokens moved up: ids 2046..2099 and 2101..2199 name nothing.
  auto doc = nlohmann::json::parse(slurp(kBundled));
  doc["added_tokens"][0]["id"] = 2100;
  doc["added_tokens"][1]["id"] = 2200;
  Scratch scratch;
  const auto path = scratch.write("holes.json", doc.dump());
  const auto holey = Tokenizer::load(path);
  CHECK(holey.vocab_size() == 2201);
  using Range = std::pair<int64_t, int64_t>;
  CHECK(holey.unused_ids() == std::vector<Range>{{2046, 2099}, {2101, 2199}});
  CHECK(troupe::data::unused_ids_note(holey, path) ==
        "tokenizer " + path + " has ids 0-2200, of which 153 name no token (2046-2099, 2101-2199); the model's "
        "vocabulary still counts them");
  CHECK(holey.encode("<|end_of_text|>") == std::vector<int32_t>{2200});
}
