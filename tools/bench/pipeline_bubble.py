#!/usr/bin/env python3
"""Measured pipeline bubble from the traces a run recorded (profiling.enable_profiling), against
the schedule's theoretical bubble from `troupe schedule`.

    python3 tools/bench/pipeline_bubble.py DUMP/profile_traces [--troupe build/troupe \
        --schedule 1F1B --pp 2 --microbatches 8 [--virtual-stages 2]] [--skip 2]

Per step: a pipeline's span runs from its first action's start to its last action's end over
its ranks; a rank's idle time is its pipeline's span minus its compute time (F, B, I, W); the
bubble is the mean over ranks of idle / span, the same definition the schedule checker uses.
With data parallelism too (pp x dp ranks), the ranks of one pipeline are those equal modulo
ranks / pp (pp is the outermost mesh dimension). The first --skip steps (warm-up) are left out.
"""
import argparse
import glob
import json
import os
import re
import subprocess
import sys


def rank_events(path):
    with open(path) as f:
        events = [e for e in json.load(f)["traceEvents"] if e.get("ph") in ("X", "i")]
    # Every step repeats the same list: the first action comes back once per step.
    key = lambda e: (e["name"], e["ph"], json.dumps(e.get("args", {}), sort_keys=True))
    first = key(events[0])
    starts = [i for i, e in enumerate(events) if key(e) == first]
    return [events[a:b] for a, b in zip(starts, starts[1:] + [len(events)])]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("traces")
    ap.add_argument("--troupe")
    ap.add_argument("--schedule")
    ap.add_argument("--pp", type=int)
    ap.add_argument("--microbatches", type=int)
    ap.add_argument("--virtual-stages", type=int, default=0)
    ap.add_argument("--skip", type=int, default=2)
    a = ap.parse_args()
    files = sorted(glob.glob(os.path.join(a.traces, "pipeline_rank*.json")),
                   key=lambda p: int(re.search(r"rank(\d+)", p).group(1)))
    if not files:
        sys.exit(f"no pipeline_rank*.json in {a.traces}")
    per_rank = [rank_events(p) for p in files]
    steps = min(len(s) for s in per_rank)
    if steps <= a.skip:
        sys.exit(f"only {steps} steps recorded; need more than --skip {a.skip}")
    ranks = len(files)
    pp = a.pp or ranks
    if ranks % pp:
        sys.exit(f"{ranks} trace files do not divide into pipelines of {pp} ranks")
    pipelines = ranks // pp
    bubbles = []
    print(f"{'step':>4} {'span ms':>9} " + " ".join(f"{'idle r' + str(r):>9}" for r in range(ranks)) + f" {'bubble':>7}")
    for s in range(a.skip, steps):
        spans, idle = [], []
        for r in range(ranks):
            members = [per_rank[q][s] for q in range(r % pipelines, ranks, pipelines)]
            begin = min(e["ts"] for rank in members for e in rank)
            end = max(e["ts"] + e.get("dur", 0) for rank in members for e in rank)
            spans.append(end - begin)
            idle.append(spans[-1] - sum(e["dur"] for e in per_rank[r][s] if e["ph"] == "X"))
        bubble = sum(i / span for i, span in zip(idle, spans)) / ranks
        bubbles.append(bubble)
        print(f"{s + 1:>4} {max(spans) / 1e3:>9.2f} " + " ".join(f"{i / 1e3:>9.2f}" for i in idle) + f" {100 * bubble:>6.1f}%")
    measured = sum(bubbles) / len(bubbles)
    print(f"measured bubble (mean of steps {a.skip + 1}..{steps}): {100 * measured:.1f}%")
    if a.troupe:
        cmd = [a.troupe, "schedule", "--schedule", a.schedule, "--pp", str(a.pp), "--microbatches", str(a.microbatches)]
        if a.virtual_stages:
            cmd += ["--virtual-stages", str(a.virtual_stages)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        theory = float(re.search(r"bubble ([0-9.]+)%", out).group(1))
        print(f"theoretical bubble ({a.schedule}, unit costs F=1 B=2): {theory:.1f}%; "
              f"measured - theory: {100 * measured - theory:+.1f} points")


if __name__ == "__main__":
    main()
