// Every CUDA runtime call and kernel launch is checked; a failure names the call and the place.
#pragma once
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace troupe::kernels {

inline void cuda_check(cudaError_t err, const char* what, const char* file, int line) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("CUDA error: ") + cudaGetErrorString(err) + " in " + what + " at " + file +
                             ":" + std::to_string(line));
}

}  // namespace troupe::kernels

#define TROUPE_CUDA_CHECK(call) ::troupe::kernels::cuda_check((call), #call, __FILE__, __LINE__)
// After a <<<...>>> launch: launch-configuration errors surface here, not at the next sync.
#define TROUPE_CUDA_CHECK_LAUNCH() ::troupe::kernels::cuda_check(cudaGetLastError(), "kernel launch", __FILE__, __LINE__)

namespace troupe::kernels {

// Streaming multiprocessors of the current device (persistent grids size themselves by it).
inline int device_sm_count() {
  int device = 0, sms = 0;
  TROUPE_CUDA_CHECK(cudaGetDevice(&device));
  TROUPE_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  return sms;
}

}  // namespace troupe::kernels
