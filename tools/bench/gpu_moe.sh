#!/usr/bin/env bash
# MoE on the GPU machine: PHASE=tests builds the CUDA variant, runs the MoE kernel and model tests
# and profiles a Qwen3 30B-A3B step (cut to 2 layers) by kernel category; PHASE=bench runs
# torchtitan's anchors and Troupe on the same shapes (both in this call). PHASE=ep (binaries
# from tools/bench/gpu_prebuilt.sh): expert parallelism's [gpu] tests, one ep rank's share of
# DeepSeek V3 16B's routed experts (expert-share, ep 8), and one rank of 8 under FSDP alone and
# under ep 8 (step-profile --rank-of 8: replicas stand in for the others). Logs in $OUT.
set -uo pipefail
out=${OUT:-gpu-logs}
mkdir -p "$out"
source .device/gpu-env.sh
export LD_LIBRARY_PATH=/opt/deps/lib/x86_64-linux-gnu:$LD_LIBRARY_PATH
QWEN="--config configs/qwen3_1.7b.toml --model.name qwen3_moe --model.flavor 30B-A3B --model.n_layers 2
  --model.aux_loss_coeff 0 --model.load_balance_coeff 0.001 --activation_checkpoint.mode none
  --model.tokenizer_path .device/qwen3.tokenizer.json"
DS="--config configs/qwen3_1.7b.toml --model.name deepseek_v3 --model.flavor 16B --model.n_layers 4
  --model.vocab_size 129280 --optimizer.lr 2.2e-4 --activation_checkpoint.mode none
  --model.tokenizer_path .device/deepseek_v3.tokenizer.json"
if [ "${PHASE:-tests}" = tests ]; then
  OUT=$out TARGETS="troupe troupe_tests troupe_bench" bash tools/bench/gpu_build.sh || exit 1
  build-gpu/tests/troupe_tests "${TESTS:-MoE routing and token-movement*,the debug model on CUDA in fp32*,the first 20 bf16 losses*}" \
    > "$out/tests.log" 2>&1
  tail -5 "$out/tests.log"
  [ -n "${NO_PROFILE:-}" ] && exit 0
  build-gpu/troupe_bench step-profile $QWEN --vocab 151936 --steps 3 > "$out/profile-qwen3moe.log" 2>&1
  python3 tools/bench/kernel_breakdown.py < "$out/profile-qwen3moe.log" | tee "$out/breakdown-qwen3moe.md"
  build-gpu/troupe_bench step-profile $DS --vocab 129280 --steps 3 > "$out/profile-ds16b.log" 2>&1
  python3 tools/bench/kernel_breakdown.py < "$out/profile-ds16b.log" | tee "$out/breakdown-ds16b.md"
elif [ "${PHASE}" = ep ]; then
  build-gpu/tests/troupe_tests "expert parallelism on CUDA*,MoE routing and token-movement*" 2>&1 | tail -30 > "$out/ep-tests.log"
  tail -3 "$out/ep-tests.log"
  for seq in ${LENGTHS:-4096 8192}; do
    build-gpu/troupe_bench expert-share $DS --training.local_batch_size 1 --training.seq_len $seq --ep 8 --rounds 5 \
      2>&1 | tee "$out/expert-share-$seq.md"
  done
  for ep in 1 8; do
    echo "== DeepSeek V3 16B x 4 layers, one rank of 8, expert_parallel_degree $ep" | tee -a "$out/ds16b-rank.log"
    timeout 300 build-gpu/troupe_bench step-profile $DS --vocab 129280 --job.device cuda --training.local_batch_size 2 \
      --training.seq_len 4096 --rank-of 8 --parallelism.expert_parallel_degree $ep --warmup 2 --steps 3 \
      > "$out/ds16b-ep$ep.log" 2>&1
    grep -E "plain loop|wall|failed|error|out of memory" "$out/ds16b-ep$ep.log" | head -4 | tee -a "$out/ds16b-rank.log"
    python3 tools/bench/kernel_breakdown.py < "$out/ds16b-ep$ep.log" > "$out/breakdown-ds16b-ep$ep.md" 2>/dev/null
  done
elif [ "${PHASE}" = tp ]; then
  # Tensor parallelism of the MoE and latent-attention blocks on CUDA: one rank of 8 under FSDP 8,
  # tp 8, tp 2 x FSDP 4, ep 8 and tp 2 x ep 8 (etp 1) (replicas stand in for the others).
  # LAYOUTS: "tp ep" pairs, comma-separated.
  IFS=, read -ra layouts <<< "${LAYOUTS:-1 1,8 1,2 1,1 8,2 8}"
  for layout in "${layouts[@]}"; do
    set -- $layout
    echo "== DeepSeek V3 16B x 4 layers, one rank of 8, tensor_parallel_degree $1, expert_parallel_degree $2" \
      | tee -a "$out/ds16b-tp.log"
    timeout 200 build-gpu/troupe_bench step-profile $DS --vocab 129280 --job.device cuda --training.local_batch_size 2 \
      --training.seq_len 4096 --rank-of 8 --parallelism.tensor_parallel_degree $1 \
      --parallelism.expert_parallel_degree $2 --warmup 2 --steps 2 2>&1 \
      | grep -E "plain loop|rank.*failed|error|out of memory" | head -3 | tee -a "$out/ds16b-tp.log"
  done
else
  grep -q qwen3_30b_a3b_short .device/torchtitan/anchors.py || cat tools/bench/torchtitan_qwen3_moe_anchor.py >> .device/torchtitan/anchors.py
  bash .device/torchtitan/setup.sh data/kjv/kjv.txt .device > "$out/tt-setup.log" 2>&1
  build-gpu/troupe train $QWEN --training.steps 30 \
    --metrics.log_freq 5 --job.dump_folder /tmp/q > "$out/troupe-q30b.log" 2>&1
  grep "step:" "$out/troupe-q30b.log" | tail -3
  TT_TIMEOUT=240 .device/torchtitan/run.sh qwen3_30b_a3b_short "$out/tt-q30b.log" --training.steps 30 > /dev/null 2>&1
  grep -E "step: +(25|30)" "$out/tt-q30b.log" | tail -2
  if [ -n "${DEEPSEEK:-}" ]; then
    build-gpu/troupe train $DS --training.steps 30 \
      --metrics.log_freq 5 --job.dump_folder /tmp/d > "$out/troupe-ds16b.log" 2>&1
    grep "step:" "$out/troupe-ds16b.log" | tail -3
    TT_TIMEOUT=240 .device/torchtitan/run.sh deepseek_v3_16b_short "$out/tt-ds16b.log" --training.steps 30 > /dev/null 2>&1
    grep -E "step: +(25|30)" "$out/tt-ds16b.log" | tail -2
  fi
fi
