"""GPU kernels of the PyTorch peer's training steps by time per step, the counterpart of
`troupe_bench step-profile`. Runs the peer script unchanged under torch.profiler and records
three steps after ten (the first compiles when --compile is given).
Usage: python3 profile_peer.py PEER_SCRIPT [peer args, e.g. --batch 4 --seq 4096 --compile]"""
import collections, runpy, sys

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.profiler import ProfilerActivity, profile, schedule

WAIT, WARMUP, ACTIVE = 8, 2, 3
peer = sys.argv[1]
sys.argv = [peer] + sys.argv[2:] + ["--warmup", str(WAIT + WARMUP), "--steps", str(ACTIVE + 1)]
prof = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA],
               schedule=schedule(wait=WAIT, warmup=WARMUP, active=ACTIVE, repeat=1))
register_optimizer_step_post_hook(lambda *_: prof.step())
prof.start()
runpy.run_path(peer, run_name="__main__")
prof.stop()

totals = collections.defaultdict(lambda: [0.0, 0])
for e in prof.events():
    if e.device_type == torch.autograd.DeviceType.CUDA:
        t = totals[e.name[:110]]
        t[0] += e.time_range.elapsed_us()
        t[1] += 1
busy = sum(t[0] for t in totals.values())
print(f"profiled {ACTIVE} steps: GPU busy {busy / 1e3 / ACTIVE:.2f} ms/step")
print("| ms/step | calls/step | GPU activity |\n|---|---|---|")
for name, (us, calls) in sorted(totals.items(), key=lambda kv: -kv[1][0]):
    if us / 1e3 / ACTIVE >= 0.05:
        print(f"| {us / 1e3 / ACTIVE:.3f} | {calls / ACTIVE:.1f} | {name} |")
