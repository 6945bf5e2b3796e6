#!/usr/bin/env python3
"""FP8 loss parity from curve-<recipe>[-s<seed>].jsonl files (tools/bench/gpu_float8.sh PHASE=curves).

Usage: loss_curves.py FOLDER [FOLDER ...] [--window 50]
Prints each run's mean loss over the last `window` steps, each recipe's mean over its seeds, and
that mean against bf16's: one run's loss at 300 steps moves by about as much between two bf16
runs as FP8 is asked to stay within, so the comparison is between means over seeds.
"""
import json, os, re, statistics, sys

args = sys.argv[1:]
window = 50
if "--window" in args:
    i = args.index("--window")
    window = int(args[i + 1])
    del args[i:i + 2]
runs = {}  # (recipe, seed) -> {step: loss}
for folder in args:
    for f in sorted(os.listdir(folder)):
        m = re.fullmatch(r"curve-(.+?)(?:-s(\d+))?\.jsonl", f)
        if not m:
            continue
        rows = [json.loads(l) for l in open(os.path.join(folder, f)) if l.strip()]
        runs[(m.group(1), int(m.group(2) or 0))] = {r["step"]: r["loss"] for r in rows if "loss" in r}
if not runs:
    sys.exit("loss_curves.py: no curve-*.jsonl in " + " ".join(args))
last = min(max(c) for c in runs.values())
tail = range(last - window + 1, last + 1)
means = {k: statistics.fmean(c[s] for s in tail) for k, c in runs.items() if all(s in c for s in tail)}
recipes = sorted({r for r, _ in means}, key=lambda r: (r != "bf16", r))
seeds = sorted({s for _, s in means})
print(f"mean loss of steps {tail.start}-{tail.stop - 1}")
print("| recipe | " + " | ".join(f"seed {s}" for s in seeds) + " | mean over seeds | vs bf16's mean |")
print("|---|" + "---|" * (len(seeds) + 2))
base = statistics.fmean(v for (r, _), v in means.items() if r == "bf16") if any(r == "bf16" for r, _ in means) else None
for r in recipes:
    vals = {s: means[(r, s)] for s in seeds if (r, s) in means}
    mean = statistics.fmean(vals.values())
    cells = " | ".join(f"{vals[s]:.4f}" if s in vals else "" for s in seeds)
    vs = f"{100 * (mean - base) / base:+.2f}%" if base and r != "bf16" else ""
    print(f"| {r} | {cells} | {mean:.4f} | {vs} |")
