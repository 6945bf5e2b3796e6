// The data pipeline: torchtitan packing, datasets (text, JSON Lines, directories, globs, token
// shards), each data-parallel rank's share, exact resume from a saved position, bad input.
#include <catch2/catch.hpp>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "data/batch_source.h"
#include "data/dataset_files.h"
#include "data/shard_preparer.h"
#include "data/token_shards.h"
#include "data/tokenizer.h"
#include "test_support.h"

using namespace troupe;
using data::BatchSource;
using data::DatasetSpec;

namespace {

const std::string kTokenizer = "data/kjv/tokenizer.json";

std::vector<std::string> documents(int n) {
  std::vector<std::string> docs;
  for (int i = 0; i < n; ++i)
    docs.push_back("Document " + std::to_string(i) + " says: " + std::string(static_cast<size_t>(i % 7 + 1), 'x') +
                   " and\nits second line, number " + std::to_string(i * 37));
  return docs;
}

std::string as_text(const std::vector<std::string>& docs) {
  std::string out;
  for (const auto& d : docs) out += d + "\n\n\n";
  return out;
}

std::string as_jsonl(const std::vector<std::string>& docs) {
  std::string out;
  for (const auto& d : docs) out += nlohmann::json{{"id", 1}, {"body", d}}.dump() + "\n";
  return out;
}

// What torchtitan packs: BOS + tokens + EOS per document, concatenated (over `epochs` passes).
std::vector<int64_t> packed_stream(const std::vector<std::string>& docs, int epochs = 3) {
  const auto tok = data::Tokenizer::load(kTokenizer);
  std::vector<int64_t> out;
  for (int e = 0; e < epochs; ++e)
    for (const auto& d : docs) {
      out.push_back(*tok.bos_id());
      for (int32_t id : tok.encode(d)) out.push_back(id);
      out.push_back(*tok.eos_id());
    }
  return out;
}

DatasetSpec spec(const std::string& kind, const std::string& path, int64_t batch = 2, int64_t seq = 16) {
  DatasetSpec s;
  s.kind = kind;
  s.path = path;
  s.text_field = "body";
  s.tokenizer_path = kTokenizer;
  s.batch_size = batch;
  s.seq_len = seq;
  s.workers = 2;
  return s;
}

std::vector<int64_t> rows(const data::Batch& b) {
  auto t = b.tokens.contiguous();
  return {t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + t.numel()};
}

}  // namespace

TEST_CASE("text is packed as torchtitan packs it: BOS/EOS per document, windows of seq_len+1", "[data]") {
  testing::TempDir dir;
  const auto docs = documents(30);
  const auto stream = packed_stream(docs);
  const auto path = dir.write("corpus.txt", as_text(docs));
  BatchSource src(spec("text", path, 2, 16), {});
  int64_t at = 0;
  for (int b = 0; b < 12; ++b) {  // past the end of the first pass
    const auto batch = src.next();
    CHECK(batch.sequence == b);
    auto tokens = batch.tokens.contiguous(), targets = batch.targets.contiguous();
    for (int64_t r = 0; r < 2; ++r, at += 17)
      for (int64_t t = 0; t < 16; ++t) {
        REQUIRE(tokens[r][t].item<int64_t>() == stream[at + t]);
        REQUIRE(targets[r][t].item<int64_t>() == stream[at + t + 1]);
      }
    // block_causal's documents: a row's count of EOS tokens before each token.
    const auto eos = *data::Tokenizer::load(kTokenizer).eos_id();
    REQUIRE(batch.documents.defined());
    for (int64_t r = 0; r < 2; ++r) {
      int64_t doc = 0;
      for (int64_t t = 0; t < 16; ++t) {
        REQUIRE(batch.documents[r][t].item<int64_t>() == doc);
        if (tokens[r][t].item<int64_t>() == eos) ++doc;
      }
    }
  }
}

TEST_CASE("JSON Lines, directories and globs give the same stream; bad records are counted skips", "[data]") {
  testing::TempDir dir;
  const auto docs = documents(20);
  std::vector<std::string> first(docs.begin(), docs.begin() + 10), second(docs.begin() + 10, docs.end());
  std::filesystem::create_directories(dir.path() / "d" / "sub");
  // Bad records among the good ones: each is skipped and counted, never a crash.
  std::string bad = "not json\n{\"id\": 2}\n{\"body\": 5}\n{\"body\": \"\"}\n[1, 2]\n\n" +
                    nlohmann::json{{"body", "x"}}.dump().replace(9, 1, "\xff") + "\n";
  dir.write("d/a.jsonl", as_jsonl(first) + bad);
  dir.write("d/sub/b.jsonl", as_jsonl(second));
  std::vector<std::string> log;
  BatchSource from_dir(spec("jsonl", dir.file("d"), 1, 32), {}, [&](const std::string& m) { log.push_back(m); });
  BatchSource from_glob(spec("jsonl", dir.file("d") + "/*/*.jsonl", 1, 32), {}, nullptr);
  BatchSource text(spec("text", dir.write("all.txt", as_text(docs)), 1, 32), {});
  const auto stream = packed_stream(docs);
  for (int b = 0; b < 8; ++b) {
    const auto expected = std::vector<int64_t>(stream.begin() + b * 33, stream.begin() + b * 33 + 32);
    CHECK(rows(from_dir.next()) == expected);
    CHECK(rows(text.next()) == expected);
  }
  const auto skips = from_dir.skips();
  CHECK(skips.malformed_json == 2);  // "not json" and the one with a byte that is not UTF-8
  CHECK(skips.missing_field == 3);   // no "body", a number, an array
  CHECK(skips.empty == 1);
  CHECK(skips.total() == 6);
  REQUIRE(log.size() == 6);
  CHECK_THAT(log[0], Catch::Contains("a.jsonl") && Catch::Contains("not JSON"));
  CHECK(data::dataset_files(dir.file("d")) == std::vector<std::string>{dir.file("d/a.jsonl"), dir.file("d/sub/b.jsonl")});
  const auto second_only = packed_stream(second);
  CHECK(rows(from_glob.next()) == std::vector<int64_t>(second_only.begin(), second_only.begin() + 32));
}

TEST_CASE("invalid UTF-8 in a text document is a counted skip", "[data]") {
  testing::TempDir dir;
  const auto docs = documents(4);
  const auto path = dir.write("c.txt", docs[0] + "\n\nbroken \xc3( here\n\n" + docs[1] + "\n\n" + docs[2] + "\n\n" + docs[3]);
  std::vector<std::string> log;
  BatchSource src(spec("text", path, 1, 8), {}, [&](const std::string& m) { log.push_back(m); });
  const auto stream = packed_stream(docs);
  CHECK(rows(src.next()) == std::vector<int64_t>(stream.begin(), stream.begin() + 8));
  CHECK(src.skips().invalid_utf8 == 1);
  REQUIRE(log.size() == 1);
  CHECK_THAT(log[0], Catch::Contains("invalid UTF-8") && Catch::Contains(path));
}

TEST_CASE("each data-parallel rank reads its own share of the documents", "[data]") {
  testing::TempDir dir;
  const auto docs = documents(12);
  const auto path = dir.write("c.txt", as_text(docs));
  std::vector<std::string> even, odd;
  for (size_t i = 0; i < docs.size(); ++i) (i % 2 ? odd : even).push_back(docs[i]);
  BatchSource rank0(spec("text", path, 1, 24), {0, 2}), rank1(spec("text", path, 1, 24), {1, 2});
  const auto s0 = packed_stream(even), s1 = packed_stream(odd);
  for (int b = 0; b < 6; ++b) {
    CHECK(rows(rank0.next()) == std::vector<int64_t>(s0.begin() + b * 25, s0.begin() + b * 25 + 24));
    CHECK(rows(rank1.next()) == std::vector<int64_t>(s1.begin() + b * 25, s1.begin() + b * 25 + 24));
  }
  CHECK_THROWS_WITH(BatchSource(spec("text", path), {2, 2}), Catch::Contains("rank 2 of 2"));
}

TEST_CASE("resume: a fresh source sought to a saved position continues with the same batches", "[data]") {
  testing::TempDir dir;
  const auto docs = documents(25);
  const auto text = dir.write("c.txt", as_text(docs));
  data::PrepareOptions prep;
  prep.files = {text};
  prep.tokenizer_path = kTokenizer;
  prep.output_dir = dir.file("shards");
  prep.shard_tokens = 100;  // windows cross shard boundaries
  const auto prepared = data::prepare_shards(prep, [](const data::PrepareProgress&) {}, nullptr);
  CHECK(prepared.shards.size() > 3);
  for (const auto& [kind, path, share] :
       {std::tuple{"text", text, data::DataShare{}}, std::tuple{"text", text, data::DataShare{1, 3}},
        std::tuple{"tokens", prep.output_dir, data::DataShare{}}}) {
    INFO(kind << " rank " << share.rank << " of " << share.degree);
    for (int stop_after : {1, 5, 13}) {  // 13: past the end of a pass
      BatchSource straight(spec(kind, path, 2, 20), share);
      for (int i = 0; i < stop_after; ++i) straight.next();
      const auto saved = straight.position();
      std::vector<std::vector<int64_t>> expected;
      for (int i = 0; i < 6; ++i) expected.push_back(rows(straight.next()));

      BatchSource resumed(spec(kind, path, 2, 20), share);
      resumed.seek(saved);
      for (int i = 0; i < 6; ++i) {
        const auto b = resumed.next();
        CHECK(b.sequence == stop_after + i);
        CHECK(rows(b) == expected[i]);
      }
    }
  }
}

TEST_CASE("token shards hold the packed stream, in uint16 or uint32", "[data]") {
  testing::TempDir dir;
  const auto docs = documents(15);
  data::PrepareOptions prep;
  prep.files = {dir.write("c.txt", as_text(docs))};
  prep.tokenizer_path = kTokenizer;
  prep.output_dir = dir.file("out");
  prep.workers = 3;
  const auto p = data::prepare_shards(prep, [](const data::PrepareProgress&) {}, nullptr);
  CHECK(p.documents == 15);
  BatchSource shards(spec("tokens", dir.file("out/*.tokens"), 1, 30), {});
  const auto stream = packed_stream(docs);
  CHECK(p.tokens == static_cast<int64_t>(stream.size() / 3));
  for (int b = 0; b < 4; ++b) CHECK(rows(shards.next()) == std::vector<int64_t>(stream.begin() + b * 31, stream.begin() + b * 31 + 30));

  data::TokenShardWriter wide(dir.file("wide.tokens"), 200000);
  const std::vector<int32_t> big{0, 70000, 199999};
  wide.append(big.data(), big.size());
  wide.finish();
  data::TokenShard read(dir.file("wide.tokens"));
  std::vector<int64_t> back(3);
  read.copy(0, 3, back.data());
  CHECK(back == std::vector<int64_t>{0, 70000, 199999});
  CHECK(std::filesystem::file_size(dir.file("wide.tokens")) == data::kShardHeaderBytes + 12);
}

TEST_CASE("bad datasets are clear errors naming the problem", "[data]") {
  testing::TempDir dir;
  using Catch::Contains;
  const auto missing = dir.file("nope.txt");
  CHECK_THROWS_WITH(BatchSource(spec("text", missing), {}), Contains(missing) && Contains("names no file"));
  CHECK_THROWS_WITH(BatchSource(spec("text", dir.file("*.none")), {}), Contains("names no file"));
  CHECK_THROWS_WITH(BatchSource(spec("parquet", dir.write("a.txt", "x")), {}), Contains("parquet") && Contains("not supported"));
  CHECK_THROWS_WITH(BatchSource(spec("text", dir.write("bad.txt", "\xff\xfe\n\n\xc3\n")), {}, nullptr),
                    Contains("no usable document"));
  CHECK_THROWS_WITH(BatchSource(spec("jsonl", dir.write("empty.jsonl", "{\"other\": 1}\n")), {}, nullptr),
                    Contains("no usable document"));
  CHECK_THROWS_WITH(BatchSource(spec("tokens", dir.write("x.tokens", "not a shard at all, no, no")), {}),
                    Contains("x.tokens") && Contains("not a token shard"));
  data::TokenShardWriter w(dir.file("big.tokens"), 5000);
  const std::vector<int32_t> t(100, 1);
  w.append(t.data(), t.size());
  w.finish();
  CHECK_THROWS_WITH(BatchSource(spec("tokens", dir.file("big.tokens")), {}), Contains("5000") && Contains("2048"));
  std::filesystem::resize_file(dir.file("big.tokens"), 100);
  CHECK_THROWS_WITH(BatchSource(spec("tokens", dir.file("big.tokens")), {}), Contains("truncated"));
  // A token past the shard's own vocabulary (a damaged file): the batch that reads it fails
  // naming the file and the position, not the embedding mid-step.
  data::TokenShardWriter damaged(dir.file("damaged.tokens"), 2048);
  std::vector<int32_t> tokens(200, 7);
  tokens[150] = 65535;
  damaged.append(tokens.data(), tokens.size());
  damaged.finish();
  BatchSource reads(spec("tokens", dir.file("damaged.tokens"), 1, 30), {});
  for (int b = 0; b < 4; ++b) reads.next();  // tokens 0..123
  CHECK_THROWS_WITH(reads.next(), Contains("damaged.tokens") && Contains("65535") && Contains("position 150") &&
                                      Contains("outside its vocabulary of 2048"));
  BatchSource ok(spec("text", dir.write("ok.txt", as_text(documents(3)))), {});
  auto pos = ok.position();
  pos.offset += 3;
  CHECK_THROWS_WITH(ok.seek(pos), Contains("does not name a document"));
}

TEST_CASE("the batches do not depend on the number of tokenizing threads", "[data]") {
  testing::TempDir dir;
  const auto path = dir.write("c.txt", as_text(documents(200)));
  auto one = spec("text", path, 4, 64), four = one;
  one.workers = 1;
  four.workers = 4;
  BatchSource a(one, {}), b(four, {});
  for (int i = 0; i < 10; ++i) CHECK(rows(a.next()) == rows(b.next()));
}
