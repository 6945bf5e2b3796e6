#!/usr/bin/env python3
"""Groups the kernel table that `troupe_bench step-profile` prints (| ms/step | calls/step | name |)
into where a MoE step's GPU time goes: grouped (expert) GEMMs, dense GEMMs, attention, routing and
token movement, element-wise and norms, optimizer, the rest. Reads the profile's output on stdin."""
import re, sys

CATEGORIES = [
    ("FP8 quantize (amax, scale, cast, transpose)", r"quantize_tiles"),
    ("FP8 GEMMs", r"e4m3|e5m2|fp8|f8f8|nvjet_sm90_q[qr]"),
    # libtorch's _grouped_mm is CUTLASS 3's GemmUniversal over a grouped problem shape.
    ("grouped GEMMs (experts)", r"grouped|Grouped|enable_3x_kernel_for_sm9x|GemmUniversal|ptr_array"),
    ("attention", r"flash|fmha|cudnn|sdpa|attention|xmma_fprop|sm90_flash|fprop_|dgrad_"),
    ("routing and token movement", r"route_kernel|permute_kernel|gather_sum_kernel|unpermute|radix|sort|Sort|bincount|index_select|index_add|scatter|gather|cumsum|topk|Topk|mbtopk|histogram"),
    ("optimizer", r"adamw|multi_tensor|foreach"),
    ("dense GEMMs", r"gemm|Gemm|nvjet|sm90_xmma|cublas|splitK|cutlass"),
    ("norms, SwiGLU, rotary, loss", r"rmsnorm|swiglu|rotary|cross_entropy|softmax|widen"),
]

def main():
    totals, step = {}, None
    for line in sys.stdin:
        m = re.match(r"\|\s*([0-9.]+)\s*\|\s*([0-9.]+)\s*\|\s*(.+?)\s*\|\s*$", line)
        if m:
            ms, name = float(m.group(1)), m.group(3)
            cat = next((c for c, rx in CATEGORIES if re.search(rx, name)), "the rest (element-wise, copies, ...)")
            totals[cat] = totals.get(cat, 0.0) + ms
        w = re.search(r"wall ([0-9.]+) ms/step", line)
        if w:
            step = float(w.group(1))
    busy = sum(totals.values())
    print("| where | ms/step | share of GPU-busy |\n|---|---|---|")
    for cat, ms in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"| {cat} | {ms:.2f} | {100 * ms / busy:.1f}% |")
    print(f"| GPU busy (sum) | {busy:.2f} | |")
    if step:
        print(f"| wall per step | {step:.2f} | |")

if __name__ == "__main__":
    main()
