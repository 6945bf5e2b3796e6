#include "checkpoint/safetensors.h"

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <cstring>
#include <stdexcept>

#include "checkpoint/file_io.h"

namespace troupe::checkpoint {

namespace {

struct DtypeName {
  const char* name;
  at::ScalarType type;
};
constexpr DtypeName kDtypes[] = {
    {"F64", at::kDouble}, {"F32", at::kFloat}, {"BF16", at::kBFloat16}, {"F16", at::kHalf},
    {"I64", at::kLong},   {"I32", at::kInt},   {"U8", at::kByte},       {"BOOL", at::kBool},
};

uint64_t read_le64(const char* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}

}  // namespace

at::ScalarType dtype_from_name(const std::string& name, const std::string& where) {
  for (const auto& d : kDtypes)
    if (name == d.name) return d.type;
  throw std::runtime_error(where + ": unsupported dtype '" + name + "'");
}

const char* dtype_name(at::ScalarType type, const std::string& where) {
  for (const auto& d : kDtypes)
    if (type == d.type) return d.name;
  throw std::runtime_error(where + ": dtype " + std::string(c10::toString(type)) + " cannot be written");
}

namespace {

at::Tensor tensor_from_entry(const std::string& file, const std::string& name, const nlohmann::json& entry,
                             const char* data, uint64_t data_size) {
  const auto where = file + ": tensor '" + name + "'";
  if (!entry.is_object() || !entry.contains("dtype") || !entry.contains("shape") || !entry.contains("data_offsets"))
    throw std::runtime_error(where + ": header entry lacks dtype, shape or data_offsets");
  const auto type = dtype_from_name(entry["dtype"].get<std::string>(), where);
  const auto shape = entry["shape"].get<std::vector<int64_t>>();
  const auto offsets = entry["data_offsets"].get<std::vector<uint64_t>>();
  if (offsets.size() != 2 || offsets[0] > offsets[1] || offsets[1] > data_size)
    throw std::runtime_error(where + ": data_offsets outside the file (truncated?)");
  auto tensor = torch::empty(shape, torch::TensorOptions().dtype(type));
  const auto expected = static_cast<uint64_t>(tensor.numel()) * tensor.element_size();
  if (offsets[1] - offsets[0] != expected)
    throw std::runtime_error(where + ": " + std::to_string(offsets[1] - offsets[0]) + " bytes for a shape needing " +
                             std::to_string(expected));
  std::memcpy(tensor.data_ptr(), data + offsets[0], expected);
  return tensor;
}

}  // namespace

TensorMap read_safetensors(const std::string& path) {
  const auto bytes = read_file(path);
  if (bytes.size() < 8) throw std::runtime_error(path + ": too short for a safetensors file");
  const uint64_t header_size = read_le64(bytes.data());
  if (header_size > bytes.size() - 8) throw std::runtime_error(path + ": header length beyond the end of the file");
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(bytes.begin() + 8, bytes.begin() + 8 + static_cast<long>(header_size));
  } catch (const nlohmann::json::exception& e) {
    throw std::runtime_error(path + ": malformed header: " + e.what());
  }
  const char* data = bytes.data() + 8 + header_size;
  const uint64_t data_size = bytes.size() - 8 - header_size;
  TensorMap tensors;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") continue;
    tensors[name] = tensor_from_entry(path, name, entry, data, data_size);
  }
  return tensors;
}

std::map<std::string, std::pair<uint64_t, uint64_t>> write_safetensors_to(
    OutputFile& out, const TensorMap& tensors, const std::map<std::string, std::string>& metadata) {
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    if (!t.is_cpu() || !t.is_contiguous())
      throw std::invalid_argument(out.path() + ": tensor '" + name + "' must be contiguous on the CPU");
    const uint64_t size = static_cast<uint64_t>(t.numel()) * t.element_size();
    header[name] = {{"dtype", dtype_name(t.scalar_type(), out.path() + ": tensor '" + name + "'")},
                    {"shape", t.sizes().vec()},
                    {"data_offsets", {offset, offset + size}}};
    offset += size;
  }
  auto text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // keeps the data 8-byte aligned
  char len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<char>((static_cast<uint64_t>(text.size()) >> (8 * i)) & 0xff);
  out.write(len, 8);
  out.write(text.data(), text.size());
  std::map<std::string, std::pair<uint64_t, uint64_t>> ranges;
  for (const auto& [name, t] : tensors) {
    const uint64_t begin = out.size();
    out.write(t.data_ptr(), static_cast<size_t>(t.numel()) * t.element_size());
    ranges[name] = {begin, out.size()};
  }
  return ranges;
}

void write_safetensors(const std::string& path, const TensorMap& tensors,
                       const std::map<std::string, std::string>& metadata) {
  TensorMap contiguous;
  for (const auto& [name, t] : tensors) contiguous[name] = t.detach().to(torch::kCPU).contiguous();
  OutputFile out(path);
  write_safetensors_to(out, contiguous, metadata);
  out.sync_and_close();
}

}  // namespace troupe::checkpoint
