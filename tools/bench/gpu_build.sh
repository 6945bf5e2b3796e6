#!/usr/bin/env bash
# On the GPU machine (see ../shared/device/README.md): configure and build the CUDA variant in
# build-gpu, and with BASE=DIR (a checkout of an earlier commit, e.g. carried in .device/base)
# that tree's troupe_bench in build-base, for measurements against the commit before a change.
# Logs in $OUT (or ./gpu-logs). Expects .device/ (gpu-env.sh, debs) in the repo root.
set -uo pipefail
out=${OUT:-gpu-logs}
mkdir -p "$out"
source .device/gpu-env.sh
export LD_LIBRARY_PATH=/opt/deps/lib/x86_64-linux-gnu:$LD_LIBRARY_PATH
nvidia-smi > "$out/nvidia-smi.txt" 2>&1
CMAKE_ARGS=${CMAKE_ARGS-"-DCMAKE_CXX_FLAGS=-UCPPHTTPLIB_BROTLI_SUPPORT -DCMAKE_EXE_LINKER_FLAGS=-L/opt/deps/lib/x86_64-linux-gnu"}
build() {  # SOURCE BUILD TARGETS...
  local src=$1 dir=$2
  shift 2
  { time cmake -S "$src" -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DTROUPE_GPU_TESTS=ON $CMAKE_ARGS \
      && time cmake --build "$dir" -j"${JOBS:-16}" --target "$@"; } > "$out/build-$(basename "$dir").log" 2>&1 ||
    { tail -40 "$out/build-$(basename "$dir").log"; return 1; }
  tail -2 "$out/build-$(basename "$dir").log"
}
build . build-gpu ${TARGETS:-troupe troupe_bench troupe_tests} || exit 1
if [ -n "${BASE:-}" ]; then build "$BASE" build-base troupe_bench || exit 1; fi
