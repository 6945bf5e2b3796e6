#!/usr/bin/env bash
# Source on the GPU machine to run binaries built here instead of building there (saves the
# build's minutes of device time): the local CUDA build (sm 90) links the same wheels. Here:
#   mkdir -p .device-bin && echo /.device-bin/ >> .git/info/exclude
#   strip --strip-debug -o .device-bin/troupe_tests build/tests/troupe_tests   (and troupe_bench, troupe)
# and carry .device-bin with .device/debs and .device/gpu-env.sh. There: `source
# tools/bench/gpu_prebuilt.sh`, then run .device-bin/troupe_tests, or the bench scripts (which
# find the binaries in build-gpu/ and skip their build). The carried debs must hold every library
# the binaries link: fetch-debs.sh with EXTRA_DEBS="libutf8proc-dev libutf8proc2 libjs-dygraphs".
source .device/gpu-env.sh > /dev/null
torch_lib=$(python3 -c 'import torch, os; print(os.path.dirname(torch.__file__))')/lib
nvidia_dir=$(python3 -c 'import nvidia; print(list(nvidia.__path__)[0])')
export LD_LIBRARY_PATH=$torch_lib:$nvidia_dir/cu13/lib:$nvidia_dir/nccl/lib:/opt/deps/lib/x86_64-linux-gnu:$LD_LIBRARY_PATH
mkdir -p build-gpu/tests
for b in troupe troupe_bench; do [ -x .device-bin/$b ] && cp .device-bin/$b build-gpu/; done
[ -x .device-bin/troupe_tests ] && cp .device-bin/troupe_tests build-gpu/tests/
# A library missing from the debs fails every run at load; say which, once, before any runs.
for b in build-gpu/troupe build-gpu/troupe_bench build-gpu/tests/troupe_tests; do
  [ -x $b ] || continue
  missing=$(ldd $b | awk '/not found/ {print $1}' | sort -u | tr '\n' ' ')
  [ -z "$missing" ] || { echo "gpu_prebuilt: $b needs libraries the carried debs lack: $missing(see EXTRA_DEBS above)" >&2; return 1 2>/dev/null || exit 1; }
done
true
