#!/usr/bin/env python3
"""FP8 loss parity from curve-<recipe>[-s<seed>].jsonl files (tools/bench/gpu_float8.sh PHASE=curves).

Usage: loss_curves.py [FOLDER ...] [--window 50] [--csv FILE] [--from-csv FILE]
--csv writes every run's loss per step, a column per run (the curves, compact enough to keep);
--from-csv reads such a file's runs too (earlier calls' runs whose files are gone).
Prints each run's mean loss over the last `window` steps, each recipe's mean over its runs, and
that mean against bf16's: one run's loss at 300 steps moves by about as much between two bf16
runs (the backward is not bitwise deterministic, other seeds) as FP8 is asked to stay within,
so the comparison is between means over runs. Folders may repeat a recipe and seed. The standard
error of each difference takes one run's spread pooled over every recipe with two runs or more,
and the 95% interval is the difference plus or minus twice it.
A second table pairs runs by seed: a seed fixes the initial weights and much of where a run
ends (seed 2's runs all end higher than seed 0's), so each FP8 run is set against bf16's runs of
its own seed, and a recipe's difference is the mean of its runs' differences, its standard error
their spread over the square root of their number.
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
from_csv = option("--from-csv", None)
runs = []  # (recipe, seed, folder, {step: loss}): every file is a run, repeats included
if from_csv:
    lines = [l.rstrip("\n").split(",") for l in open(from_csv) if l.strip()]
    for j, name in enumerate(lines[0][1:], start=1):
        m = re.fullmatch(r"(.+?)-s(\d+)-(.+)", name)
        if not m:
            sys.exit(f"loss_curves.py: {from_csv}: column '{name}' is not RECIPE-sSEED-FOLDER")
        runs.append((m.group(1), int(m.group(2)), m.group(3),
                     {int(row[0]): float(row[j]) for row in lines[1:] if j < len(row) and row[j]}))
for folder in args:
    for f in sorted(os.listdir(folder)):
        m = re.fullmatch(r"curve-(.+?)(?:-s(\d+))?\.jsonl", f)
        if not m:
            continue
        rows = [json.loads(l) for l in open(os.path.join(folder, f)) if l.strip()]
        runs.append((m.group(1), int(m.group(2) or 0), folder, {r["step"]: r["loss"] for r in rows if "loss" in r}))
if not runs:
    sys.exit("loss_curves.py: no runs (curve-*.jsonl in the folders, or --from-csv)")
last = min(max(c) for *_, c in runs)
tail = range(last - window + 1, last + 1)
means = {}  # recipe -> [(seed, folder, mean)]
for recipe, seed, folder, c in runs:
    if all(s in c for s in tail):
        means.setdefault(recipe, []).append((seed, folder, statistics.fmean(c[s] for s in tail)))
recipes = sorted(means, key=lambda r: (r != "bf16", r))
def spread_cells(diff, e):
    """A difference's standard error and 95% interval (plus or minus twice it), in %."""
    return f"{e:.2f}%", f"{diff - 2 * e:+.2f}% .. {diff + 2 * e:+.2f}%"
base = statistics.fmean(m for *_, m in means["bf16"]) if "bf16" in means else None
# One run's spread, pooled: the squared deviations from each recipe's own mean over the degrees
# of freedom left.
groups = [[m for *_, m in means[r]] for r in recipes if len(means[r]) > 1]
dof = sum(len(g) - 1 for g in groups)
pooled_sd = (sum(sum((v - statistics.fmean(g)) ** 2 for v in g) for g in groups) / dof) ** 0.5 if dof else None
print(f"mean loss of steps {tail.start}-{tail.stop - 1}, each run (seed, folder), then the recipe's mean over its runs")
if pooled_sd:
    print(f"one run's spread, pooled over the recipes: sd {pooled_sd:.4f} ({dof} degrees of freedom)")
print("| recipe | runs | mean | spread (sd) | vs bf16's mean | standard error | 95% interval |")
print("|---|---|---|---|---|---|---|")
for r in recipes:
    vals = [m for *_, m in means[r]]
    mean = statistics.fmean(vals)
    sd = f"{statistics.stdev(vals):.4f}" if len(vals) > 1 else ""
    cells = ", ".join(f"{m:.4f} (s{seed}, {os.path.basename(os.path.normpath(folder))})" for seed, folder, m in means[r])
    vs = se = interval = ""
    if base and r != "bf16":
        diff = 100 * (mean - base) / base
        vs = f"{diff:+.2f}%"
        if pooled_sd:
            se, interval = spread_cells(diff, 100 * pooled_sd / base * (1 / len(vals) + 1 / len(means["bf16"])) ** 0.5)
    print(f"| {r} | {cells} | {mean:.4f} | {sd} | {vs} | {se} | {interval} |")
bf16_of_seed = {seed: statistics.fmean(m for s, _, m in means["bf16"] if s == seed) for seed, *_ in means.get("bf16", [])}
paired = {r: [100 * (m - bf16_of_seed[seed]) / bf16_of_seed[seed] for seed, _, m in means[r] if seed in bf16_of_seed]
          for r in recipes if r != "bf16"}
if any(paired.values()):
    print("\neach run against bf16's runs of its own seed")
    print("| recipe | runs' differences | mean | standard error | 95% interval |")
    print("|---|---|---|---|---|")
    for r, d in paired.items():
        if not d:
            continue
        mean = statistics.fmean(d)
        se = interval = ""
        if len(d) > 1:
            se, interval = spread_cells(mean, statistics.stdev(d) / len(d) ** 0.5)
        print(f"| {r} | {', '.join(f'{x:+.2f}%' for x in d)} | {mean:+.2f}% | {se} | {interval} |")
if csv_path:
    with open(csv_path, "w") as out:
        out.write("step," + ",".join(f"{r}-s{seed}-{os.path.basename(os.path.normpath(folder))}" for r, seed, folder, _ in runs) + "\n")
        for step in range(1, last + 1):
            out.write(f"{step}," + ",".join(f"{c[step]:.5f}" if step in c else "" for *_, c in runs) + "\n")
