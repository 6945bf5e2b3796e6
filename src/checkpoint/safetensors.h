// Hugging Face safetensors files: an 8-byte little-endian header length, a JSON header
// (dtype, shape, data_offsets per tensor, optional __metadata__), then the raw bytes.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <string>
#include <utility>

namespace troupe::checkpoint {

using TensorMap = std::map<std::string, at::Tensor>;
class OutputFile;

// safetensors dtype names ("F32", "BF16", ...); `where` prefixes the error for an unknown one.
at::ScalarType dtype_from_name(const std::string& name, const std::string& where);
const char* dtype_name(at::ScalarType type, const std::string& where);

// CPU tensors; throws std::runtime_error naming the file (and the tensor) on any inconsistency.
TensorMap read_safetensors(const std::string& path);

// Writes contiguous CPU copies of `tensors` (F64, F32, BF16, F16, I64, I32, U8, BOOL) and
// fsyncs the file.
void write_safetensors(const std::string& path, const TensorMap& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// Writes `tensors`, which must be contiguous and on the CPU, to `out` (not synced); returns each
// tensor's [begin, end) byte range in the file.
std::map<std::string, std::pair<uint64_t, uint64_t>> write_safetensors_to(
    OutputFile& out, const TensorMap& tensors, const std::map<std::string, std::string>& metadata = {});

}  // namespace troupe::checkpoint
