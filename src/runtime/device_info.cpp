#include "runtime/device_info.h"

#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <cuda_runtime_api.h>

#include <unistd.h>

#include <stdexcept>
#include <utility>
#include <vector>

namespace troupe::runtime {

double peak_bf16_flops(const std::string& gpu_name) {
  // Dense (not sparse) bf16 figures from the vendors' data sheets; first match wins.
  static const std::vector<std::pair<std::string, double>> table = {
      {"H200", 989.5e12}, {"H100", 989.5e12}, {"H800", 989.5e12}, {"GH200", 989.5e12}, {"B200", 2250e12},
      {"A100", 312e12},   {"A800", 312e12},   {"L40S", 362.05e12}, {"L4", 121e12},     {"A10", 125e12},
  };
  for (const auto& [name, flops] : table)
    if (gpu_name.find(name) != std::string::npos) return flops;
  return 0.0;
}

uint64_t device_memory_bytes(const std::string& device) {
  if (!device.starts_with("cuda")) {
    const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
    return pages > 0 && page > 0 ? static_cast<uint64_t>(pages) * static_cast<uint64_t>(page) : 0;
  }
  const int index = device.size() > 5 ? std::stoi(device.substr(5)) : 0;
  cudaDeviceProp prop{};
  const auto err = cudaGetDeviceProperties(&prop, index);
  if (err != cudaSuccess) throw std::runtime_error(std::string("cudaGetDeviceProperties: ") + cudaGetErrorString(err));
  return prop.totalGlobalMem;
}

std::string cuda_device_name(int device) {
  cudaDeviceProp prop{};
  const auto err = cudaGetDeviceProperties(&prop, device);
  if (err != cudaSuccess) throw std::runtime_error(std::string("cudaGetDeviceProperties: ") + cudaGetErrorString(err));
  return prop.name;
}

void reset_gpu_memory_peaks(int device) { c10::cuda::CUDACachingAllocator::resetPeakStats(static_cast<c10::DeviceIndex>(device)); }

GpuMemoryPeaks gpu_memory_peaks(int device) {
  const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(static_cast<c10::DeviceIndex>(device));
  const auto all = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
  return {stats.active_bytes[all].peak, stats.reserved_bytes[all].peak};
}

}  // namespace troupe::runtime
