#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>

#include "cli/commands.h"
#include "data/tokenizer.h"

namespace troupe::cli {

namespace {

struct TokenizerOptions {
  std::vector<std::string> train_inputs;
  int vocab_size = 2048;
  std::string output;
  std::string tokenizer;
  std::string input;  // empty: stdin
  bool add_special = false;
};

std::string read_input(const std::string& path) {
  std::ostringstream buf;
  if (path.empty()) {
    buf << std::cin.rdbuf();
    return std::move(buf).str();
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("input file '" + path + "' cannot be opened");
  buf << in.rdbuf();
  return std::move(buf).str();
}

int run_train(const TokenizerOptions& o) {
  const auto start = std::chrono::steady_clock::now();
  data::BpeTrainOptions train_options;
  train_options.vocab_size = o.vocab_size;
  const auto tok = data::train_bpe(o.train_inputs, train_options);
  tok.save(o.output);
  const std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
  std::printf("trained a byte-level BPE tokenizer of %lld tokens on %zu file(s) in %.1f s -> %s\n",
              static_cast<long long>(tok.vocab_size()), o.train_inputs.size(), took.count(), o.output.c_str());
  return 0;
}

int run_encode(const TokenizerOptions& o) {
  const auto tok = data::Tokenizer::load(o.tokenizer);
  std::vector<int32_t> ids;
  if (o.add_special && tok.bos_id()) ids.push_back(*tok.bos_id());
  const auto body = tok.encode(read_input(o.input));
  ids.insert(ids.end(), body.begin(), body.end());
  if (o.add_special && tok.eos_id()) ids.push_back(*tok.eos_id());
  std::string line;
  for (size_t i = 0; i < ids.size(); ++i) line += (i ? " " : "") + std::to_string(ids[i]);
  std::cout << line << '\n';
  return 0;
}

std::vector<int32_t> parse_ids(const std::string& text) {
  std::istringstream in(text);
  std::vector<int32_t> ids;
  std::string word;
  while (in >> word) {
    size_t used = 0;
    long long id = -1;
    try {
      id = std::stoll(word, &used);
    } catch (const std::exception&) {
    }
    if (used != word.size() || id < INT32_MIN || id > INT32_MAX)
      throw std::invalid_argument("'" + word + "' is not a token id");
    ids.push_back(static_cast<int32_t>(id));
  }
  return ids;
}

int run_decode(const TokenizerOptions& o) {
  const auto tok = data::Tokenizer::load(o.tokenizer);
  // No newline added: the output is exactly the decoded bytes, so round trips compare equal.
  std::cout << tok.decode(parse_ids(read_input(o.input))) << std::flush;
  return 0;
}

CLI::App* add_train(CLI::App& parent, TokenizerOptions& o) {
  auto* cmd = parent.add_subcommand("train", "Train a byte-level BPE tokenizer (Llama 3 layout) on text files");
  cmd->add_option("--input", o.train_inputs, "UTF-8 text files to train on")->required();
  cmd->add_option("--vocab-size", o.vocab_size, "tokens in all: 256 bytes + merges + 2 special tokens")
      ->capture_default_str();
  cmd->add_option("--output", o.output, "tokenizer.json to write")->required();
  return cmd;
}

CLI::App* add_encode(CLI::App& parent, TokenizerOptions& o) {
  auto* cmd = parent.add_subcommand("encode", "Print the token ids of a text, separated by spaces");
  cmd->add_option("--tokenizer", o.tokenizer, "Hugging Face tokenizer.json or tiktoken rank file")->required();
  cmd->add_option("--input", o.input, "text file (default: stdin)");
  cmd->add_flag("--add-special", o.add_special, "wrap the ids in the tokenizer's begin/end-of-text tokens (those it has)");
  return cmd;
}

CLI::App* add_decode(CLI::App& parent, TokenizerOptions& o) {
  auto* cmd = parent.add_subcommand("decode", "Print the text of whitespace-separated token ids");
  cmd->add_option("--tokenizer", o.tokenizer, "Hugging Face tokenizer.json or tiktoken rank file")->required();
  cmd->add_option("--input", o.input, "file of ids (default: stdin)");
  return cmd;
}

}  // namespace

Action add_tokenizer_command(CLI::App& app) {
  auto opts = std::make_shared<TokenizerOptions>();
  auto* cmd = app.add_subcommand("tokenizer", "Train a BPE tokenizer, or encode and decode with one");
  cmd->require_subcommand(1);
  auto* train = add_train(*cmd, *opts);
  auto* encode = add_encode(*cmd, *opts);
  add_decode(*cmd, *opts);  // the remaining choice, given require_subcommand(1)
  return [=]() -> int {
    if (!cmd->parsed()) return -1;
    try {
      if (train->parsed()) return run_train(*opts);
      if (encode->parsed()) return run_encode(*opts);
      return run_decode(*opts);
    } catch (const std::exception& e) {
      std::cerr << "troupe tokenizer: " << e.what() << '\n';
      return 1;
    }
  };
}

}  // namespace troupe::cli
