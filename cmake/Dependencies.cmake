# Every dependency comes from Debian packages, except libtorch (the PyPI torch wheel).
find_package(Threads REQUIRED)

if(NOT Torch_DIR AND NOT DEFINED ENV{Torch_DIR})
  execute_process(COMMAND python3 -c "import torch; print(torch.utils.cmake_prefix_path)"
                  OUTPUT_VARIABLE TORCH_PREFIX OUTPUT_STRIP_TRAILING_WHITESPACE
                  RESULT_VARIABLE TORCH_PY_RESULT)
  if(NOT TORCH_PY_RESULT EQUAL 0)
    message(FATAL_ERROR "libtorch not found: pip install torch==2.11.0 (or set Torch_DIR)")
  endif()
  list(APPEND CMAKE_PREFIX_PATH ${TORCH_PREFIX})
endif()
# libtorch's config probes the local GPU when nvcc exists; name the architecture instead
# (H100/H200) so that CPU-only machines configure too.
if(NOT DEFINED ENV{TORCH_CUDA_ARCH_LIST})
  set(ENV{TORCH_CUDA_ARCH_LIST} "9.0")
endif()
set(CMAKE_CUDA_STANDARD 17)
find_package(Torch 2.11 REQUIRED)

# CAF 0.17 ships neither a CMake config nor a pkg-config file.
find_path(CAF_INCLUDE_DIR caf/all.hpp REQUIRED)
find_library(CAF_CORE_LIBRARY caf_core REQUIRED)
find_library(CAF_IO_LIBRARY caf_io REQUIRED)
add_library(troupe_caf INTERFACE)
target_include_directories(troupe_caf INTERFACE ${CAF_INCLUDE_DIR})
target_link_libraries(troupe_caf INTERFACE ${CAF_CORE_LIBRARY} ${CAF_IO_LIBRARY})

find_path(PCRE2_INCLUDE_DIR pcre2.h REQUIRED)
find_library(PCRE2_LIBRARY pcre2-8 REQUIRED)
add_library(troupe_pcre2 INTERFACE)
target_include_directories(troupe_pcre2 INTERFACE ${PCRE2_INCLUDE_DIR})
target_link_libraries(troupe_pcre2 INTERFACE ${PCRE2_LIBRARY})
target_compile_definitions(troupe_pcre2 INTERFACE PCRE2_CODE_UNIT_WIDTH=8)

# Unicode normalization (NFC, NFKC, ...) for tokenizers that normalize, such as Qwen3's.
find_path(UTF8PROC_INCLUDE_DIR utf8proc.h REQUIRED)
find_library(UTF8PROC_LIBRARY utf8proc REQUIRED)
add_library(troupe_utf8proc INTERFACE)
target_include_directories(troupe_utf8proc INTERFACE ${UTF8PROC_INCLUDE_DIR})
target_link_libraries(troupe_utf8proc INTERFACE ${UTF8PROC_LIBRARY})

# xxHash (XXH3) checksums every tensor of a checkpoint shard.
find_path(XXHASH_INCLUDE_DIR xxhash.h REQUIRED)
find_library(XXHASH_LIBRARY xxhash REQUIRED)
add_library(troupe_xxhash INTERFACE)
target_include_directories(troupe_xxhash INTERFACE ${XXHASH_INCLUDE_DIR})
target_link_libraries(troupe_xxhash INTERFACE ${XXHASH_LIBRARY})

# Gloo: the Gloo compiled into libtorch, reached through c10d's ProcessGroupGloo. The wheel has
# no Gloo headers, so Debian's libgloo-dev provides them; its library is never linked (two
# Gloos in one process would clash, DESIGN §5).
find_path(GLOO_INCLUDE_DIR gloo/context.h HINTS $ENV{GLOO_INCLUDE_DIR} REQUIRED)
add_library(troupe_gloo_headers INTERFACE)
target_include_directories(troupe_gloo_headers INTERFACE ${GLOO_INCLUDE_DIR})

# cpp-httplib (the inspection endpoint and `troupe inspect`): Debian builds it as a library
# with TLS and compression, so its header needs the same definitions (its pkg-config Cflags).
find_path(HTTPLIB_INCLUDE_DIR httplib.h REQUIRED)
find_library(HTTPLIB_LIBRARY cpp-httplib REQUIRED)
find_package(OpenSSL REQUIRED)
find_package(ZLIB REQUIRED)
add_library(troupe_httplib INTERFACE)
target_include_directories(troupe_httplib INTERFACE ${HTTPLIB_INCLUDE_DIR})
target_compile_definitions(troupe_httplib INTERFACE CPPHTTPLIB_OPENSSL_SUPPORT CPPHTTPLIB_ZLIB_SUPPORT
                           CPPHTTPLIB_BROTLI_SUPPORT)
target_link_libraries(troupe_httplib INTERFACE ${HTTPLIB_LIBRARY} OpenSSL::SSL OpenSSL::Crypto ZLIB::ZLIB)

# ncurses: the `troupe inspect` console.
find_package(Curses REQUIRED)
add_library(troupe_curses INTERFACE)
target_include_directories(troupe_curses INTERFACE ${CURSES_INCLUDE_DIRS})
target_link_libraries(troupe_curses INTERFACE ${CURSES_LIBRARIES})

find_package(tomlplusplus REQUIRED)
find_package(nlohmann_json REQUIRED)
find_package(CLI11 REQUIRED)
find_package(Catch2 2 REQUIRED)
