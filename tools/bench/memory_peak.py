#!/usr/bin/env python3
"""What is live on the GPU at a step's peak, by owner.

Reads the pickled CUDA allocator snapshot that `troupe_bench step-profile --memory-history FILE`
writes (one step with every allocation's C++ stack), replays that step's allocations and frees,
and prints the blocks live at the peak grouped by the Troupe frames that allocated them.
Blocks from before the recorded step (parameters, optimizer state) are counted apart.

    python3 tools/bench/memory_peak.py FILE [--depth 3] [--top 40]
"""
import argparse
import collections
import pickle
import re

GiB = 1024.0**3


def owner(frames, depth):
    """The innermost `depth` frames of Troupe's own code, short."""
    names = []
    for f in frames:
        name = f.get("name", "")
        if "troupe::" not in name or "bench::" in name:
            continue
        name = re.sub(r"\(.*", "", name)  # arguments off
        name = re.sub(r"troupe::(models::|kernels::|parallel::|train::)?", "", name)
        name = re.sub(r"\{lambda[^}]*\}", "lambda", name)
        if names and names[-1] == name:
            continue
        names.append(name)
        if len(names) == depth:
            break
    if names:
        return " < ".join(names)
    # No Troupe frame (an autograd engine thread, a Troupe class in an anonymous namespace): the
    # first frames past the allocator's.
    skip = ("c10::", "CUDACachingAllocator", "at::empty", "at::detail", "at::native::empty", "malloc",
            "CapturedTraceback", "unwind", "??", "_start", "clone", "start_thread")
    names = [re.sub(r"\(.*", "", f.get("name", "")) for f in frames]
    names = [n for n in names if n and not any(k in n for k in skip)]
    return "(outside Troupe) " + " < ".join(names[:depth]) if names else "(no frame)"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("snapshot")
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--top", type=int, default=40)
    args = ap.parse_args()
    with open(args.snapshot, "rb") as f:
        snap = pickle.load(f)
    for device, trace in enumerate(snap["device_traces"]):
        if not trace:
            continue
        # Blocks active at the end that the recorded step did not allocate: from before it.
        before = 0
        for seg in snap["segments"]:
            if seg["device"] != device:
                continue
            for blk in seg["blocks"]:
                if blk["state"] == "active_allocated":
                    before += blk["size"]
        live = {}
        requested = set()  # freed by their owner, the allocator still waiting on a stream's event
        total = peak = 0
        peak_at = -1
        peak_deferred = 0
        freed_unknown = 0
        for i, e in enumerate(trace):
            if e["action"] == "alloc":
                live[e["addr"]] = e
                total += e["size"]
                if total > peak:
                    peak, peak_at = total, i
                    peak_deferred = sum(live[a]["size"] for a in requested if a in live)
            elif e["action"] == "free_requested":
                requested.add(e["addr"])
            elif e["action"] == "free_completed":
                requested.discard(e["addr"])
                if live.pop(e["addr"], None) is not None:
                    total -= e["size"]
                else:
                    freed_unknown += e["size"]  # allocated before the recording
        before -= sum(e["size"] for e in live.values())
        # Replay again to the peak to list what is live there.
        live = {}
        requested = set()
        for e in trace[: peak_at + 1]:
            if e["action"] == "alloc":
                live[e["addr"]] = e
                requested.discard(e["addr"])
            elif e["action"] == "free_requested":
                requested.add(e["addr"])
            elif e["action"] == "free_completed":
                live.pop(e["addr"], None)
                requested.discard(e["addr"])
        groups = collections.defaultdict(lambda: [0, 0])
        for addr, e in live.items():
            pending = " [freed, event pending]" if addr in requested else ""
            g = groups[owner(e.get("frames", []), args.depth) + pending]
            g[0] += e["size"]
            g[1] += 1
        print(f"cuda:{device}: {len(trace)} events; the recorded step's own allocations peak at "
              f"{peak / GiB:.3f} GiB (event {peak_at}); blocks from before it still live at its end "
              f"{before / GiB:.3f} GiB; freed during it but allocated before {freed_unknown / GiB:.3f} GiB; "
              f"at the peak, freed by their owners but not yet by the allocator (a stream's event pending) "
              f"{peak_deferred / GiB:.3f} GiB")
        print("| GiB live at the peak | blocks | allocated by |\n|---|---|---|")
        for name, (size, count) in sorted(groups.items(), key=lambda kv: -kv[1][0])[: args.top]:
            print(f"| {size / GiB:.3f} | {count} | {name} |")


if __name__ == "__main__":
    main()
