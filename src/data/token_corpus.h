// A text corpus turned into one token stream: documents (separated by blank lines) each
// wrapped in begin/end-of-text tokens and concatenated, as torchtitan packs its samples.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace troupe::data {

class Tokenizer;

// Resolves the configured dataset name to the file to read (std::invalid_argument if unknown).
std::string dataset_file(const std::string& dataset, const std::string& dataset_path);

std::vector<int32_t> tokenize_corpus(const std::string& path, const Tokenizer& tokenizer);
std::vector<std::string> split_documents(const std::string& text);

}  // namespace troupe::data
