# The CUDA kernels build wherever the CUDA toolkit is (CI included, GPU or not), so GPU code
# never rots unseen. -DTROUPE_CUDA=OFF builds without them.
include(CheckLanguage)
if(NOT CMAKE_CUDA_COMPILER AND EXISTS /usr/local/cuda/bin/nvcc)
  set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc)
endif()
check_language(CUDA)
if(CMAKE_CUDA_COMPILER)
  option(TROUPE_CUDA "Build the CUDA kernels" ON)
else()
  option(TROUPE_CUDA "Build the CUDA kernels" OFF)
endif()
if(TROUPE_CUDA)
  if(NOT CMAKE_CUDA_ARCHITECTURES)
    set(CMAKE_CUDA_ARCHITECTURES 90)  # H100 / H200
  endif()
  enable_language(CUDA)
  set(CMAKE_CUDA_STANDARD 17)
  set(CMAKE_CUDA_STANDARD_REQUIRED ON)
  find_package(CUDAToolkit REQUIRED)
  # A library of torch's nvidia-* wheels (the copy libtorch itself loads, so the process holds
  # one), else the toolkit's target.
  function(troupe_wheel_library var soname fallback)
    execute_process(COMMAND python3 -c
                    "import glob, nvidia; print(([f for p in nvidia.__path__ for f in sorted(glob.glob(p + '/*/lib/${soname}.so.*'))] + [''])[0])"
                    OUTPUT_VARIABLE wheel OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
    if(wheel)
      set(${var} ${wheel} PARENT_SCOPE)
    else()
      set(${var} ${fallback} PARENT_SCOPE)
    endif()
  endfunction()
  # The CUDA runtime libtorch and cuDNN were built against: with the toolkit's (older) runtime
  # loaded first, cuDNN's attention failed to start (CUDNN_STATUS_INTERNAL_ERROR).
  troupe_wheel_library(TROUPE_CUDART libcudart CUDA::cudart)
  message(STATUS "Troupe: CUDA runtime ${TROUPE_CUDART}")
  # cuBLASLt for the FP8 GEMMs.
  troupe_wheel_library(TROUPE_CUBLASLT libcublasLt CUDA::cublasLt)
  message(STATUS "Troupe: cuBLASLt ${TROUPE_CUBLASLT}")
  message(STATUS "Troupe: CUDA kernels ON (nvcc ${CMAKE_CUDA_COMPILER_VERSION}, sm ${CMAKE_CUDA_ARCHITECTURES})")
else()
  message(STATUS "Troupe: CUDA kernels OFF")
endif()
if(TROUPE_CUDA AND CCACHE)
  set(CMAKE_CUDA_COMPILER_LAUNCHER ${CCACHE})
endif()

# NCCL: the nvidia-nccl wheel that torch pulls in (the copy libtorch itself loads, so one process
# never holds two NCCLs), else the toolkit's. NCCL_INCLUDE_DIR / NCCL_LIBRARY override both
# (../shared/device/gpu-env.sh sets them on the GPU machine).
if(TROUPE_CUDA)
  execute_process(COMMAND python3 -c "import nvidia.nccl as n; print(list(n.__path__)[0])"
                  OUTPUT_VARIABLE TROUPE_NCCL_WHEEL OUTPUT_STRIP_TRAILING_WHITESPACE
                  RESULT_VARIABLE TROUPE_NCCL_WHEEL_RESULT ERROR_QUIET)
  if(NOT TROUPE_NCCL_WHEEL_RESULT EQUAL 0)
    set(TROUPE_NCCL_WHEEL "")
  endif()
  find_path(TROUPE_NCCL_INCLUDE nccl.h
            HINTS $ENV{NCCL_INCLUDE_DIR} ${TROUPE_NCCL_WHEEL}/include ${CUDAToolkit_INCLUDE_DIRS}
                  /usr/local/cuda/include)
  if(DEFINED ENV{NCCL_LIBRARY})
    set(TROUPE_NCCL_LIBRARY $ENV{NCCL_LIBRARY})
  else()
    find_library(TROUPE_NCCL_LIBRARY NAMES nccl libnccl.so.2 NAMES_PER_DIR
                 HINTS ${TROUPE_NCCL_WHEEL}/lib ${CUDAToolkit_LIBRARY_DIR} /usr/local/cuda/lib64
                       /usr/local/cuda/lib)
  endif()
  if(NOT TROUPE_NCCL_INCLUDE OR NOT TROUPE_NCCL_LIBRARY)
    message(FATAL_ERROR "NCCL not found (header: ${TROUPE_NCCL_INCLUDE}, library: "
            "${TROUPE_NCCL_LIBRARY}). pip install torch==2.11.0 brings it (nvidia-nccl), or set "
            "NCCL_INCLUDE_DIR and NCCL_LIBRARY, or configure with -DTROUPE_CUDA=OFF.")
  endif()
  message(STATUS "Troupe: NCCL ${TROUPE_NCCL_INCLUDE} ${TROUPE_NCCL_LIBRARY}")
endif()
