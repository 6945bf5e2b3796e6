#!/usr/bin/env bash
# One GPU-machine session (see ../shared/device/README.md): build the CUDA variant, run the GPU
# tests and the benchmark against the PyTorch peer. Logs go to $OUT (or ./gpu-logs).
# Expects .device/ (gpu-env.sh, debs, ref_llama.py, llama3_1.tokenizer.json) in the repo root.
set -uo pipefail
out=${OUT:-gpu-logs}
mkdir -p "$out"
source .device/gpu-env.sh
nvidia-smi > "$out/nvidia-smi.txt" 2>&1
# CMAKE_ARGS: extra configure arguments. The default covers what the GPU machine lacks: brotli's
# headers (Debian's cpp-httplib is built with it) and ncurses on the linker's path (its deb
# unpacks to /opt/deps/lib). fetch-debs.sh also needs EXTRA_DEBS="libutf8proc-dev libutf8proc2 libjs-dygraphs".
CMAKE_ARGS=${CMAKE_ARGS-"-DCMAKE_CXX_FLAGS=-UCPPHTTPLIB_BROTLI_SUPPORT -DCMAKE_EXE_LINKER_FLAGS=-L/opt/deps/lib/x86_64-linux-gnu"}
export LD_LIBRARY_PATH=/opt/deps/lib/x86_64-linux-gnu:$LD_LIBRARY_PATH
{ time cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DTROUPE_GPU_TESTS=ON $CMAKE_ARGS \
    && time cmake --build build-gpu -j16; } > "$out/build.log" 2>&1 || { tail -50 "$out/build.log"; exit 1; }
tail -3 "$out/build.log"
# The large-shape [gpu2] test reads Llama 3's tokenizer (carried in .device/).
export TROUPE_TEST_LLAMA3_TOKENIZER=${TROUPE_TEST_LLAMA3_TOKENIZER:-$PWD/.device/llama3_1.tokenizer.json}
(cd build-gpu && ctest -R "${TESTS:-gpu|kernels|oracle|model|gradients}" --output-on-failure ${CTEST_ARGS:-}) > "$out/ctest.log" 2>&1
tail -15 "$out/ctest.log"
# SHAPES: batch x seq pairs, e.g. "4x4096 2x8192".
for shape in ${SHAPES-4x4096}; do  # SHAPES="" runs no benchmark
  batch=${shape%x*} seq=${shape#*x}
  tools/bench/gpu_vs_pytorch.sh .device/ref_llama.py .device/llama3_1.tokenizer.json "$batch" "$seq" "${STEPS:-30}" \
    ${TROUPE_ARGS:-} > "$out/bench_b${batch}_s${seq}.log" 2>&1
  tail -8 "$out/bench_b${batch}_s${seq}.log"
done
