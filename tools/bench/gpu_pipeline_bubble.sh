#!/usr/bin/env bash
# Pipeline bubble on GPUs: each schedule's measured bubble (from the recorded traces) against the
# schedule's theory. Usage (repo root, after building build-gpu):
#   tools/bench/gpu_pipeline_bubble.sh TOKENIZER_JSON [MICROBATCHES] [STEPS] [troupe overrides...]
# Environment: PP (pipeline degree, 2), DP (FSDP degree over each stage, 1; the job takes PP x DP
# GPUs), MODEL (1.5b: seq 4096, or 8b: seq 8192 with full activation checkpointing),
# SCHEDULES ("1F1B Interleaved1F1B"; interleaved ones get 2 stages per rank), LAUNCH and
# RUN_TIMEOUT (tools/bench/launch.sh).
# Issue 6: PP=2 (the default). Issue 9: PP=4 DP=2 MODEL=8b SCHEDULES=Interleaved1F1B.
set -euo pipefail
tokenizer=$1 microbatches=${2:-8} steps=${3:-12}
pp=${PP:-2} dp=${DP:-1} model=${MODEL:-1.5b}
troupe=${TROUPE:-build-gpu/troupe}
source "$(dirname "$0")/launch.sh"
case $model in
  1.5b) blocks=16 head=3.4 seq=4096 model_args=() ;;
  8b) blocks=32 head=2.3 seq=8192 model_args=(--model.flavor 8B --activation_checkpoint.mode full) ;;
  *) echo "MODEL: 1.5b or 8b" >&2; exit 2 ;;
esac
echo "# $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1) x $((pp * dp)), $model, pp $pp x FSDP $dp," \
  "$microbatches micro-batches of 1 x $seq"
# The schedules' theory assumes stages of equal cost. The head (vocabulary x dim) plus the loss
# costs about `head` blocks, so the split points balance blocks + head over the stages: the last
# stage gets that many fewer blocks (1.50B over 2 stages: 10 | 6 + head).
split_points() {
  python3 - "$blocks" "$head" "$1" <<'PY'
import sys
blocks, head, stages = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
target = (blocks + head) / stages
ends, prev = [], 0
for i in range(1, stages):
    end = min(max(round(target * i), prev + 1), blocks - (stages - i))  # every stage keeps a block
    ends.append(end)
    prev = end
print(",".join(f"layers.{e}" for e in ends))
PY
}
for schedule in ${SCHEDULES:-1F1B Interleaved1F1B}; do
  per_rank=1
  [[ $schedule == Interleaved* ]] && per_rank=2
  dump=/tmp/troupe_pp_$schedule
  rm -rf "$dump"
  launch_ranks $((pp * dp)) "$dump.log" "$troupe" train --config configs/llama3_1.5b.toml "${model_args[@]}" \
    --model.tokenizer_path "$tokenizer" --parallelism.data_parallel_shard_degree "$dp" \
    --parallelism.pipeline_parallel_degree "$pp" --parallelism.pipeline_parallel_schedule "$schedule" \
    --parallelism.pipeline_parallel_split_points "$(split_points $((pp * per_rank)))" \
    --training.local_batch_size "$microbatches" --training.seq_len "$seq" --training.steps "$steps" \
    --profiling.enable_profiling true --checkpoint.enable false --inspect.enable false --metrics.log_freq 4 \
    --job.dump_folder "$dump" "${@:4}" || { tail -20 "$dump.log"* >&2; exit 1; }
  tail -3 "$dump.log"
  v=0; [ "$per_rank" = 2 ] && v=2
  python3 tools/bench/pipeline_bubble.py "$dump/profile_traces" --troupe "$troupe" --schedule "$schedule" --pp "$pp" \
    --microbatches "$microbatches" --virtual-stages "$v" --skip 2
done
