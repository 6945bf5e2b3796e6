#!/usr/bin/env python3
"""FP8 loss parity from curve-<recipe>[-s<seed>].jsonl files (tools/bench/gpu_float8.sh PHASE=curves).

Usage: loss_curves.py FOLDER [FOLDER ...] [--window 50] [--csv FILE]
--csv writes every run's loss per step, a column per run (the curves, compact enough to keep).
Prints each run's mean loss over the last `window` steps, each recipe's mean over its runs, and
that mean against bf16's: one run's loss at 300 steps moves by about as much between two bf16
runs (the backward is not bitwise deterministic, other seeds) as FP8 is asked to stay within,
so the comparison is between means over runs. Folders may repeat a recipe and seed.
"""
import json, os, re, statistics, sys

args = sys.argv[1:]
def option(name, default):
    if name not in args:
        return default
    i = args.index(name)
    value = args[i + 1]
    del args[i:i + 2]
    return value

window = int(option("--window", 50))
csv_path = option("--csv", None)
runs = []  # (recipe, seed, folder, {step: loss}): every file is a run, repeats included
for folder in args:
    for f in sorted(os.listdir(folder)):
        m = re.fullmatch(r"curve-(.+?)(?:-s(\d+))?\.jsonl", f)
        if not m:
            continue
        rows = [json.loads(l) for l in open(os.path.join(folder, f)) if l.strip()]
        runs.append((m.group(1), int(m.group(2) or 0), folder, {r["step"]: r["loss"] for r in rows if "loss" in r}))
if not runs:
    sys.exit("loss_curves.py: no curve-*.jsonl in " + " ".join(args))
last = min(max(c) for *_, c in runs)
tail = range(last - window + 1, last + 1)
means = {}  # recipe -> [(seed, folder, mean)]
for recipe, seed, folder, c in runs:
    if all(s in c for s in tail):
        means.setdefault(recipe, []).append((seed, folder, statistics.fmean(c[s] for s in tail)))
recipes = sorted(means, key=lambda r: (r != "bf16", r))
base = statistics.fmean(m for *_, m in means["bf16"]) if "bf16" in means else None
print(f"mean loss of steps {tail.start}-{tail.stop - 1}, each run (seed, folder), then the recipe's mean over its runs")
print("| recipe | runs | mean | spread (sd) | vs bf16's mean |")
print("|---|---|---|---|---|")
for r in recipes:
    vals = [m for *_, m in means[r]]
    mean = statistics.fmean(vals)
    sd = f"{statistics.stdev(vals):.4f}" if len(vals) > 1 else ""
    cells = ", ".join(f"{m:.4f} (s{seed}, {os.path.basename(os.path.normpath(folder))})" for seed, folder, m in means[r])
    vs = f"{100 * (mean - base) / base:+.2f}%" if base and r != "bf16" else ""
    print(f"| {r} | {cells} | {mean:.4f} | {sd} | {vs} |")
if csv_path:
    with open(csv_path, "w") as out:
        out.write("step," + ",".join(f"{r}-s{seed}-{os.path.basename(os.path.normpath(folder))}" for r, seed, folder, _ in runs) + "\n")
        for step in range(1, last + 1):
            out.write(f"{step}," + ",".join(f"{c[step]:.5f}" if step in c else "" for *_, c in runs) + "\n")
