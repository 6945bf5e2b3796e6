#!/usr/bin/env bash
# Troupe FSDP against the PyTorch FSDP2 peer on every GPU of one node, same shapes, in one call
# (issue 5's targets). Usage (repo root, after building build-gpu):
#   tools/bench/gpu_fsdp_vs_pytorch.sh PEER_SCRIPT TOKENIZER_JSON FLAVOR_ARGS BATCH SEQ STEPS [troupe overrides...]
# FLAVOR_ARGS: "1.5b" (configs/llama3_1.5b.toml vs the peer's defaults), "8b" (flavor 8B, full
# activation checkpointing on both sides) or "8b16" (the 8B cut to 16 blocks, --model.n_layers 16, as 8b).
set -euo pipefail
peer=$1 tokenizer=$2 flavor=$3 batch=$4 seq=$5 steps=$6
shift 6
gpus=$(nvidia-smi -L | wc -l)
bench=${TROUPE_BENCH:-build-gpu/troupe_bench}
warmup=5
results=$(mktemp)
log=${LOG:-$(mktemp)}  # each run's whole output: $log.troupe-N (LOG=path to keep them)
case $flavor in
  1.5b) troupe_model=(--config configs/llama3_1.5b.toml); peer_model=() ;;
  8b) troupe_model=(--config configs/llama3_1.5b.toml --model.flavor 8B --activation_checkpoint.mode full)
      peer_model=(--dim 4096 --layers 32 --heads 32 --kv_heads 8 --ffn 14336 --ac) ;;
  8b16) troupe_model=(--config configs/llama3_1.5b.toml --model.flavor 8B --model.n_layers 16 --activation_checkpoint.mode full)
      peer_model=(--dim 4096 --layers 16 --heads 32 --kv_heads 8 --ffn 14336 --ac) ;;
  *) echo "flavor: 1.5b, 8b or 8b16 (the 8B blocks, 16 of them: fits one GPU)" >&2; exit 2 ;;
esac
echo "# $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1) x $gpus, $flavor, batch $batch per GPU, seq $seq, steps $steps (first $warmup excluded), Troupe launched as ${LAUNCH:-process}"
# DUMP: Troupe's dump folder (a failed or hung run leaves its ranks' collectives in DUMP/comm_traces).
# RANKS: the Troupe runs, "1 N" by default (8B: only N, as one GPU cannot hold its optimizer state;
# weak scaling on 8 GPUs: "1 2 4 8").
source "$(dirname "$0")/launch.sh"  # launch_ranks: LAUNCH=process | processes, RUN_TIMEOUT
extra=("$@")
for ranks in ${RANKS:-1 $gpus}; do
  launch_ranks "$ranks" "$log.troupe-$ranks" "$bench" throughput "${troupe_model[@]}" --warmup "$warmup" \
    --model.tokenizer_path "$tokenizer" --training.local_batch_size "$batch" --training.seq_len "$seq" \
    --training.steps "$steps" --metrics.log_freq 5 --job.dump_folder "${DUMP:-/tmp/troupe_fsdp_bench}" "${extra[@]}" \
    || { tail -20 "$log.troupe-$ranks"* >&2; exit 1; }
  tail -3 "$log.troupe-$ranks" >&2
  grep '^{"runner"' "$log.troupe-$ranks" | python3 -c "import json,sys; d=json.loads(sys.stdin.read()); d['runner']='troupe-$ranks-gpu'; print(json.dumps(d))" >> "$results"
done
out=$(torchrun --standalone --nproc_per_node "$gpus" "$peer" "${peer_model[@]}" --batch "$batch" --seq "$seq" \
      --steps $((steps - warmup)) --warmup "$warmup" --compile 2>&1 | tail -1) || true
echo "$out" | python3 -c "import json,sys; d=json.loads(sys.stdin.read()); d['runner']='pytorch-fsdp2-compile'; print(json.dumps(d))" >> "$results" \
  || echo "{\"runner\": \"pytorch-fsdp2-compile\", \"error\": \"$(echo "$out" | tr -d '\"' | tail -c 200)\"}" >> "$results"
python3 - "$results" "$gpus" <<'PY'
import json, re, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
gpus = int(sys.argv[2])
def per_gpu(r):  # troupe reports the job's tokens/s (troupe-N-gpu: N ranks); the peer reports per GPU
    m = re.fullmatch(r"troupe-(\d+)-gpu", r["runner"])
    return r["tokens_per_s"] / (int(m.group(1)) if m else 1)
troupe = next(r for r in rows if r["runner"] == f"troupe-{gpus}-gpu")
one = next((r for r in rows if r["runner"] == "troupe-1-gpu" and "error" not in r), None)
print("| runner | tokens/s per GPU | MFU | peak memory GiB | Troupe (all GPUs) / runner | per GPU / Troupe on 1 GPU |")
print("|---|---|---|---|---|---|")
for r in rows:
    if "error" in r:
        print(f"| {r['runner']} | failed: {r['error'][:80]} | | | | |"); continue
    mem = r.get("peak_active_gib", r.get("peak_mem_gib"))
    scaling = f"{per_gpu(r) / per_gpu(one):.3f}" if one and r["runner"].startswith("troupe") else ""
    print(f"| {r['runner']} | {per_gpu(r):,.0f} | {100 * r['mfu']:.1f}% | {mem} | {per_gpu(troupe) / per_gpu(r):.3f} | {scaling} |")
PY
