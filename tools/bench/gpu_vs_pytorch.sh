#!/usr/bin/env bash
# Troupe against the PyTorch peer (eager and torch.compile) on the same GPU, same shapes, in one
# call. Usage (repo root, after building build-gpu):
#   tools/bench/gpu_vs_pytorch.sh PEER_SCRIPT TOKENIZER_JSON [BATCH SEQ [STEPS [extra troupe overrides...]]]
# PEER_SCRIPT is ../shared/peers/ref_llama.py; TOKENIZER_JSON a 128256-token vocabulary (Llama 3.1).
# PEER_MODES (default "eager compile") picks the peer runs; TROUPE_BENCH another troupe_bench binary.
set -euo pipefail
peer=$1 tokenizer=$2 batch=${3:-4} seq=${4:-4096} steps=${5:-30}
shift $(( $# < 5 ? $# : 5 ))
bench=${TROUPE_BENCH:-build-gpu/troupe_bench}
warmup=8
results=$(mktemp)
echo "# $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1), batch $batch, seq $seq, steps $steps (first $warmup excluded)"
"$bench" throughput --config configs/llama3_1.5b.toml --warmup "$warmup" --model.tokenizer_path "$tokenizer" \
  --training.local_batch_size "$batch" --training.seq_len "$seq" --training.steps "$steps" \
  --metrics.log_freq 10 --job.dump_folder /tmp/troupe_bench_out "$@" | tee /dev/stderr | grep '^{"runner"' >> "$results"
for mode in ${PEER_MODES:-eager compile}; do  # PEER_MODES=compile skips eager
  flag=$([ "$mode" = compile ] && echo --compile || true)
  if out=$(python3 "$peer" --batch "$batch" --seq "$seq" --steps $((steps - warmup)) --warmup "$warmup" $flag 2>&1 | tail -1); then
    echo "$out" | python3 -c "import json,sys; d=json.loads(sys.stdin.read()); d['runner']='pytorch-$mode'; print(json.dumps(d))" >> "$results" \
      || echo "{\"runner\": \"pytorch-$mode\", \"error\": \"$(echo "$out" | tr -d '\"' | tail -c 200)\"}" >> "$results"
  else
    echo "{\"runner\": \"pytorch-$mode\", \"error\": \"$(echo "$out" | tr -d '\"' | tail -c 200)\"}" >> "$results"
  fi
done
python3 - "$results" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
troupe = next(r for r in rows if r["runner"] == "troupe")
print("| runner | tokens/s | MFU | peak memory GiB | Troupe / runner |")
print("|---|---|---|---|---|")
for r in rows:
    if "error" in r:
        print(f"| {r['runner']} | failed: {r['error'][:80]} | | | |")
        continue
    tps = r["tokens_per_s"]; mem = r.get("peak_active_gib", r.get("peak_mem_gib"))
    print(f"| {r['runner']} | {tps:,.0f} | {100 * r['mfu']:.1f}% | {mem} | {troupe['tokens_per_s'] / tps:.3f} |")
PY
