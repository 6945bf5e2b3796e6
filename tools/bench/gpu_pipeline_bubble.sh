#!/usr/bin/env bash
# Issue 6 on 2 GPUs: pp 2 on the 1.50B shapes with 1F1B and Interleaved1F1B; the measured bubble
# (from the recorded traces) against the schedule's. Usage (repo root, after building build-gpu):
#   tools/bench/gpu_pipeline_bubble.sh TOKENIZER_JSON [MICROBATCHES] [STEPS] [troupe overrides...]
set -euo pipefail
tokenizer=$1 microbatches=${2:-8} steps=${3:-12}
troupe=${TROUPE:-build-gpu/troupe}
echo "# $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1) x 2, 1.50B, pp 2, $microbatches micro-batches of 1 x 4096"
# The schedules' theory assumes stages of equal cost. The head (2048 x 128256) plus the loss cost
# about 3.4 blocks, so the last stage gets that many fewer blocks: 10 | 6 + head for two stages,
# 5 | 5 | 5 | 1 + head for four.
declare -A splits=([1F1B]=layers.10 [Interleaved1F1B]=layers.5,layers.10,layers.15)
for schedule in 1F1B Interleaved1F1B; do
  dump=/tmp/troupe_pp_$schedule
  rm -rf "$dump"
  "$troupe" train --config configs/llama3_1.5b.toml --model.tokenizer_path "$tokenizer" --job.local_ranks 2 \
    --parallelism.pipeline_parallel_degree 2 --parallelism.pipeline_parallel_schedule "$schedule" \
    --parallelism.pipeline_parallel_split_points "${splits[$schedule]}" \
    --training.local_batch_size "$microbatches" --training.seq_len 4096 --training.steps "$steps" \
    --profiling.enable_profiling true --checkpoint.enable false --inspect.enable false --metrics.log_freq 4 \
    --job.dump_folder "$dump" "${@:4}" | tail -3
  v=0; [ "$schedule" = Interleaved1F1B ] && v=2
  python3 tools/bench/pipeline_bubble.py "$dump/profile_traces" --troupe "$troupe" --schedule "$schedule" --pp 2 \
    --microbatches "$microbatches" --virtual-stages "$v" --skip 2
done
