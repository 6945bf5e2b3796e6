#!/usr/bin/env bash
# A 2-rank FSDP job in four layouts, one after the other, in one device call: which of them runs,
# and how fast. Stop 15 saw a 2-GPU job of one process hang (one GPU busy in a collective, the
# other idle); each rung takes away one suspect:
#   1. one process drives both GPUs (the default);
#   2. one process per GPU (LAUNCH=processes): is the hazard one process driving several GPUs?
#   3. one process, NCCL_P2P_DIRECT_DISABLE=1 with expandable segments: is it the peer mappings
#      that NCCL's P2P transport turns on (every cudaMalloc/cudaFree then maps into the peer)?
#   4. one process, TROUPE_FSDP_GRADIENT_SINKS=0: is it the gradient sinks?
# A hung rung ends within 1.5 x comm.train_timeout_seconds (the stall watch), naming each rank's
# unit; its log keeps every thread's stack. Usage (repo root, after building build-gpu):
#   tools/bench/gpu_hang_ladder.sh TOKENIZER_JSON [troupe overrides...]
# RUNGS picks some ("1 3"); CONFIG (configs/llama3_1.5b.toml), BATCH (4), SEQ (4096), STEPS (15).
set -uo pipefail
tokenizer=$1
shift
bench=${TROUPE_BENCH:-build-gpu/troupe_bench}
logs=${LOG:-$(mktemp -d)}
mkdir -p "$logs"
source "$(dirname "$0")/launch.sh"  # launch_ranks
export RUN_TIMEOUT=${RUN_TIMEOUT:-240}
layouts=("" process processes process process)
settings=("" "" "" "NCCL_P2P_DIRECT_DISABLE=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True"
          "TROUPE_FSDP_GRADIENT_SINKS=0")
echo "| rung | launch | environment | exit | seconds | tokens/s per GPU | last line |"
echo "|---|---|---|---|---|---|---|"
for rung in ${RUNGS:-1 2 3 4}; do
  log="$logs/rung$rung.log"
  start=$(date +%s)
  (
    for setting in ${settings[$rung]}; do export "${setting?}"; done
    LAUNCH=${layouts[$rung]} launch_ranks 2 "$log" "$bench" throughput --config "${CONFIG:-configs/llama3_1.5b.toml}" \
      --warmup 3 --model.tokenizer_path "$tokenizer" --training.local_batch_size "${BATCH:-4}" \
      --training.seq_len "${SEQ:-4096}" --training.steps "${STEPS:-15}" --metrics.log_freq 5 \
      --comm.train_timeout_seconds 40 --job.dump_folder "$logs/dump$rung" "$@"
  )
  rc=$?
  seconds=$(($(date +%s) - start))
  rate=$(grep -h '^{"runner"' "$log" 2>/dev/null | head -1 | python3 -c \
    'import json,sys; print("{:,.0f}".format(json.load(sys.stdin)["tokens_per_s"] / 2))' 2>/dev/null)
  last=$(grep -v '^\s*$\|^[|{]' "$log" 2>/dev/null | tail -1 | tr '|' '/' | cut -c1-160)
  echo "| $rung | ${layouts[$rung]} | ${settings[$rung]:--} | $rc | $seconds | ${rate:--} | $last |"
done
echo "logs: $logs"
