// Types the kernel interfaces use, declared without CUDA headers so that host-only code (the
// CPU references, the libtorch bindings, CPU-only builds) can include the kernel headers.
#pragma once
#include <cstdint>

struct CUstream_st;
using cudaStream_t = CUstream_st*;  // the CUDA runtime's own definition, repeated

namespace troupe::kernels {

// Storage type of a kernel's tensors; arithmetic is fp32 either way.
enum class Dtype { f32, bf16 };

}  // namespace troupe::kernels
