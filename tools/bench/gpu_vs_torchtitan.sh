#!/usr/bin/env bash
# Troupe against torchtitan itself on the same GPU, same shapes, in one call.
# Usage (repo root, after building build-gpu and running KIT/setup.sh):
#   tools/bench/gpu_vs_torchtitan.sh KIT ANCHOR TROUPE_CONFIG TOKENIZER_JSON [STEPS [extra troupe overrides...]]
# KIT: the torchtitan kit (../shared/peers/torchtitan, carried as .device/torchtitan); ANCHOR a
# function of its anchors.py (qwen3_1_7b_local, llama3_1p5b). The config's batch and seq_len must
# be the anchor's. TT=0 skips torchtitan; TROUPE_BENCH another troupe_bench binary; BASE_BENCH a
# second one (the commit before a change) run on the same shapes, reported as "troupe-base".
set -euo pipefail
kit=$1 anchor=$2 config=$3 tokenizer=$4 steps=${5:-30}
shift $(( $# < 5 ? $# : 5 ))
bench=${TROUPE_BENCH:-build-gpu/troupe_bench}
warmup=10
results=$(mktemp)
echo "# $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1), $config vs torchtitan $anchor, $steps steps (first $warmup excluded)"
run_troupe() {  # NAME BINARY [overrides...]
  local name=$1 binary=$2
  shift 2
  "$binary" throughput --config "$config" --warmup "$warmup" --model.tokenizer_path "$tokenizer" --training.steps "$steps" \
    --metrics.log_freq 10 --job.dump_folder "/tmp/troupe_bench_$name" "$@" 2>&1 | tee /dev/stderr | grep '^{"runner"' |
    python3 -c "import json,sys; d=json.loads(sys.stdin.read()); d['runner']='$name'; print(json.dumps(d))" >> "$results" ||
    echo "{\"runner\": \"$name\", \"error\": \"no result\"}" >> "$results"
}
extra=("$@")
run_troupe troupe "$bench" "${extra[@]}"
[ -n "${BASE_BENCH:-}" ] && run_troupe troupe-base "$BASE_BENCH" "${extra[@]}"
if [ "${TT:-1}" != 0 ]; then
  log=${TT_LOG:-/tmp/tt_$anchor.log}
  TT_TAIL=4 "$kit/run.sh" "$anchor" "$log" --training.steps "$steps" || true
  # torchtitan's step lines: "step: 30  loss: ...  memory: 42.21GiB(53.4%)  tps: 35,115  tflops: ...  mfu: 46.6%".
  python3 - "$log" "$warmup" >> "$results" <<'PY'
import json, re, sys
text = re.sub(r"\x1b\[[0-9;]*m", "", open(sys.argv[1], errors="replace").read())
rows = []
for m in re.finditer(r"step:\s*(\d+).*?memory:\s*([\d.]+)GiB.*?tps:\s*([\d,]+).*?mfu:\s*([\d.]+)%", text):
    step, mem, tps, mfu = int(m.group(1)), float(m.group(2)), float(m.group(3).replace(",", "")), float(m.group(4))
    if step > int(sys.argv[2]):
        rows.append((step, mem, tps, mfu))
if not rows:
    print(json.dumps({"runner": "torchtitan", "error": "no step line past the warmup in " + sys.argv[1]}))
else:
    # Its tps is per logging window: the windows past the warmup, averaged.
    print(json.dumps({"runner": "torchtitan", "tokens_per_s": sum(r[2] for r in rows) / len(rows),
                      "mfu": sum(r[3] for r in rows) / len(rows) / 100, "peak_active_gib": max(r[1] for r in rows)}))
PY
fi
python3 - "$results" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
troupe = next((r for r in rows if r["runner"] == "troupe" and "error" not in r), None)
print("| runner | tokens/s | MFU | peak memory GiB | Troupe / runner |")
print("|---|---|---|---|---|")
for r in rows:
    if "error" in r:
        print(f"| {r['runner']} | failed: {r['error'][:80]} | | | |")
        continue
    tps = r["tokens_per_s"]; mem = r.get("peak_active_gib", r.get("peak_mem_gib"))
    ratio = f"{troupe['tokens_per_s'] / tps:.3f}" if troupe else ""
    print(f"| {r['runner']} | {tps:,.0f} | {100 * r['mfu']:.1f}% | {mem} | {ratio} |")
PY
