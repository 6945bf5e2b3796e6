// What the metrics need to know about the device: its bf16 peak for MFU and memory figures.
#pragma once
#include <cstdint>
#include <string>

namespace troupe::runtime {

// Dense bf16 tensor-core peak in FLOP/s for a GPU of this name (torch's device name), 0 when the
// GPU is not in the table (MFU is then not reported). H100/H200 SXM: 989.5 TFLOP/s, as torchtitan.
double peak_bf16_flops(const std::string& gpu_name);

struct GpuMemoryPeaks {
  int64_t active_bytes = 0;
  int64_t reserved_bytes = 0;
};

std::string cuda_device_name(int device);
// The memory a rank on `device` ("cpu", "cuda", "cuda:N") can have at most: the machine's RAM, or
// the GPU's total.
uint64_t device_memory_bytes(const std::string& device);
// Peaks of the caching allocator since the last reset.
void reset_gpu_memory_peaks(int device);
GpuMemoryPeaks gpu_memory_peaks(int device);

}  // namespace troupe::runtime
