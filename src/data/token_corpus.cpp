#include "data/token_corpus.h"

#include <fstream>
#include <sstream>
#include <stdexcept>

#include "data/tokenizer.h"

namespace troupe::data {

std::string dataset_file(const std::string& dataset, const std::string& dataset_path) {
  if (dataset == "kjv") return dataset_path.empty() ? std::string("data/kjv/kjv.txt") : dataset_path;
  if (dataset == "text") {
    if (dataset_path.empty()) throw std::invalid_argument("training.dataset = \"text\" needs training.dataset_path");
    return dataset_path;
  }
  throw std::invalid_argument("training.dataset: unknown dataset '" + dataset + "' (known: kjv, text)");
}

std::vector<std::string> split_documents(const std::string& text) {
  std::vector<std::string> docs;
  std::string current;
  std::istringstream in(text);
  std::string line;
  auto flush = [&] {
    if (!current.empty()) docs.push_back(std::move(current));
    current.clear();
  };
  while (std::getline(in, line)) {
    if (line.empty()) {
      flush();
      continue;
    }
    if (!current.empty()) current += '\n';
    current += line;
  }
  flush();
  return docs;
}

std::vector<int32_t> tokenize_corpus(const std::string& path, const Tokenizer& tokenizer) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("dataset file '" + path + "' cannot be opened");
  std::stringstream buf;
  buf << in.rdbuf();
  if (in.bad()) throw std::runtime_error("dataset file '" + path + "': read error");
  std::vector<int32_t> stream;
  const int32_t bos = tokenizer.bos_id(), eos = tokenizer.eos_id();
  for (const auto& doc : split_documents(buf.str())) {
    stream.push_back(bos);
    auto ids = tokenizer.encode(doc);
    stream.insert(stream.end(), ids.begin(), ids.end());
    stream.push_back(eos);
  }
  if (stream.empty()) throw std::runtime_error("dataset file '" + path + "' holds no text");
  return stream;
}

}  // namespace troupe::data
