#!/usr/bin/env python3
"""Reads a Troupe TensorBoard folder with the `tensorboard` package (an independent reader) and
checks its scalars against metrics.jsonl of the same run: every step present, values equal to
the JSONL ones rounded to float32.

usage: tensorboard_check.py <tb folder> <metrics.jsonl>   (exit 0: match; 1: mismatch, with a message)
"""
import json
import struct
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

GIB = 1024.0**3


def f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


def expected_scalars(jsonl_path):
    want = {}  # tag -> {step: float32 value}

    def put(tag, step, value):
        want.setdefault(tag, {})[step] = f32(value)

    with open(jsonl_path) as f:
        for line in f:
            r = json.loads(line)
            step = r["step"]
            if "validation_loss" in r:
                put("validation_loss", step, r["validation_loss"])
                put("validation_perplexity", step, r["validation_perplexity"])
                continue
            for tag in ("loss", "lr", "grad_norm", "tps"):
                put(tag, step, r[tag])
            if r["mfu"] > 0:
                put("mfu", step, r["mfu"])
            if r["gpu_peak_reserved_bytes"] > 0:
                put("memory/gpu_peak_active_gib", step, r["gpu_peak_active_bytes"] / GIB)
                put("memory/gpu_peak_reserved_gib", step, r["gpu_peak_reserved_bytes"] / GIB)
            else:
                put("memory/rss_gib", step, r["rss_bytes"] / GIB)
    return want


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    tb_dir, jsonl_path = sys.argv[1:]
    want = expected_scalars(jsonl_path)
    if not want:
        sys.exit(f"{jsonl_path}: no records")
    ea = EventAccumulator(tb_dir, size_guidance={"scalars": 0})  # 0: keep every event
    ea.Reload()
    tags = set(ea.Tags()["scalars"])
    errors = []
    if tags != set(want):
        errors.append(f"scalar tags {sorted(tags)} != expected {sorted(want)}")
    for tag in sorted(set(want) & tags):
        got = {}
        for e in ea.Scalars(tag):
            if e.step in got:
                errors.append(f"{tag}: step {e.step} written twice")
            got[e.step] = e.value
        if set(got) != set(want[tag]):
            errors.append(f"{tag}: steps {sorted(got)} != expected {sorted(want[tag])}")
        for step in sorted(set(got) & set(want[tag])):
            if got[step] != want[tag][step]:
                errors.append(f"{tag} step {step}: tensorboard {got[step]!r} != metrics.jsonl {want[tag][step]!r}")
    if errors:
        print("\n".join(errors[:20]), file=sys.stderr)
        sys.exit(1)
    n = sum(len(v) for v in want.values())
    print(f"tensorboard: {len(want)} tags, {n} scalars match {jsonl_path}")


if __name__ == "__main__":
    main()
