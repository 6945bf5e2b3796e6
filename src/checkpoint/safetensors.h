// Hugging Face safetensors files: an 8-byte little-endian header length, a JSON header
// (dtype, shape, data_offsets per tensor, optional __metadata__), then the raw bytes.
#pragma once
#include <ATen/core/Tensor.h>

#include <map>
#include <string>

namespace troupe::checkpoint {

using TensorMap = std::map<std::string, at::Tensor>;

// CPU tensors; throws std::runtime_error naming the file (and the tensor) on any inconsistency.
TensorMap read_safetensors(const std::string& path);

// Writes contiguous CPU copies of `tensors` (F64, F32, BF16, F16, I64, I32, U8, BOOL).
void write_safetensors(const std::string& path, const TensorMap& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace troupe::checkpoint
