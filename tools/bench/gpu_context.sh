#!/usr/bin/env bash
# Context parallelism and document masking on one GPU (binaries from tools/bench/gpu_prebuilt.sh
# or build-gpu/). PHASE=tests: the [gpu] tests. PHASE=share: one cp rank's attention against the
# whole sequence's (8B heads, seq 131072, cp 8; causal and block_causal; allgather, and the
# ring's compute without its transfers). PHASE=long: the 8B
# blocks x 16 layers with block_causal masking as one rank's share of FSDP over 8 (--fsdp-as 8)
# at growing sequence lengths (LENGTHS), under AC (AC=full or op), until one does not fit.
# PHASE=cprank and tprank: one context- or tensor-parallel rank's share of the whole model (the
# other ranks replicas: step-profile --rank-of 8).
set -u
out=${OUT:-/tmp/gpu_context}
mkdir -p "$out"
bench=build-gpu/troupe_bench
case "${PHASE:-tests}" in
  tests)
    build-gpu/tests/troupe_tests "${TESTS:-[gpu]}" 2>&1 | tail -40 > "$out/gpu-tests.log"
    tail -5 "$out/gpu-tests.log" ;;
  share)
    for docs in ${DOCS:-0 2048}; do
      $bench attention-share --config configs/llama3_debug.toml --model.flavor 8B --training.seq_len 131072 \
        --training.local_batch_size 1 --cp 8 --document-tokens $docs --rounds 3 2>&1 | tee "$out/share-docs$docs.log"
    done ;;
  long)
    ac_args=(--activation_checkpoint.mode full)
    [ "${AC:-full}" = op ] && ac_args=(--activation_checkpoint.mode selective --activation_checkpoint.selective_ac_option op)
    for seq in ${LENGTHS:-8192 32768 65536 131072}; do
      echo "== seq $seq, AC ${AC:-full}" | tee -a "$out/long-${AC:-full}.log"
      timeout 300 $bench step-profile --config configs/llama3_debug.toml --model.flavor 8B --model.n_layers 16 \
        --model.tokenizer_path .device/llama3_1.tokenizer.json --job.device cuda \
        --training.local_batch_size 1 --training.seq_len $seq --training.attention_mask block_causal \
        --document-tokens 2048 --fsdp-as 8 --vocab 128256 --warmup 1 --steps 1 "${ac_args[@]}" 2>&1 \
        | grep -E "plain loop|rank.*failed|error|out of memory|more than" | head -5 | tee -a "$out/long-${AC:-full}.log"
    done ;;
  cprank)
    # One cp rank's share of the whole model (8B blocks x 16 layers, seq 131072, cp 8; replicas
    # stand in for the other 7 ranks, FSDP over dp_shard x cp = 8).
    # RUNS: "method mask" pairs, comma-separated.
    IFS=, read -ra runs <<< "${RUNS:-allgather causal,ring causal,allgather block_causal}"
    for run in "${runs[@]}"; do
      set -- $run
      echo "== cp 8, $1, $2" | tee -a "$out/cprank.log"
      timeout 300 $bench step-profile --config configs/llama3_debug.toml --model.flavor 8B --model.n_layers 16 \
        --model.tokenizer_path .device/llama3_1.tokenizer.json --job.device cuda \
        --training.local_batch_size 1 --training.seq_len 131072 --training.attention_mask $2 --document-tokens 2048 \
        --parallelism.context_parallel_degree 8 --parallelism.context_parallel_rotate_method $1 \
        --activation_checkpoint.mode full --rank-of 8 --vocab 128256 --warmup 1 --steps 1 2>&1 \
        | grep -E "plain loop|compute stream busy|rank.*failed|error|out of memory|more than" | head -5 | tee -a "$out/cprank.log"
    done ;;
  tprank)
    # One tensor-parallel rank's share (issue 27's benchmark): 8B blocks x 16 layers, batch 2 x
    # 8192, replicas standing in for the other 7 ranks. "tp 1 x dp_shard 8" computes the whole
    # blocks (its state sharded by FSDP): the unsharded compute the shares are held against, by
    # the compute stream's busy time (the replicas' copies run on their own stream). LAYOUTS:
    # "tp dp_shard async" triples, comma-separated.
    IFS=, read -ra layouts <<< "${LAYOUTS:-1 8 false,2 4 false,2 4 true,8 1 false,8 1 true}"
    for layout in "${layouts[@]}"; do
      set -- $layout
      echo "== tp $1 x dp_shard $2, async $3" | tee -a "$out/tprank.log"
      timeout 300 $bench step-profile --config configs/llama3_debug.toml --model.flavor 8B --model.n_layers 16 \
        --model.tokenizer_path .device/llama3_1.tokenizer.json --job.device cuda \
        --training.local_batch_size 2 --training.seq_len 8192 --parallelism.tensor_parallel_degree $1 \
        --parallelism.enable_async_tensor_parallel $3 --rank-of 8 --vocab 128256 --warmup 1 --steps 2 \
        > "$out/tprank-tp$1-async$3.log" 2>&1
      grep -E "plain loop|compute stream busy|rank.*failed|error|out of memory|more than" "$out/tprank-tp$1-async$3.log" \
        | head -5 | tee -a "$out/tprank.log"
    done ;;
  tpmemory)
    # What is live at the peak of one step of a tensor-parallel rank's share (the tprank shapes), by
    # the Troupe frames that allocated it (tools/bench/memory_peak.py). LAYOUTS as tprank's.
    IFS=, read -ra layouts <<< "${LAYOUTS:-1 8 false,2 4 false}"
    for layout in "${layouts[@]}"; do
      set -- $layout
      snapshot=/tmp/memory-tp$1-async$3.pickle
      TORCH_SYMBOLIZE_MODE=dladdr timeout 300 $bench step-profile --config configs/llama3_debug.toml --model.flavor 8B \
        --model.n_layers 16 --model.tokenizer_path .device/llama3_1.tokenizer.json --job.device cuda \
        --training.local_batch_size 2 --training.seq_len 8192 --parallelism.tensor_parallel_degree $1 \
        --parallelism.enable_async_tensor_parallel $3 --rank-of 8 --vocab 128256 --warmup 1 --steps 1 \
        --memory-history $snapshot 2>&1 | grep -E "plain loop|rank.*failed|error|out of memory" | head -5
      python3 tools/bench/memory_peak.py $snapshot --depth ${DEPTH:-3} > "$out/memory-tp$1-async$3.md" 2>&1
      head -30 "$out/memory-tp$1-async$3.md"
    done ;;
esac
