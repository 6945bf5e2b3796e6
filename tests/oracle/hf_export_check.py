#!/usr/bin/env python3
"""Checks a Hugging Face folder that `troupe checkpoint export --hf` wrote.

Loads it with transformers' AutoModelForCausalLM.from_pretrained (LlamaForCausalLM, Qwen3ForCausalLM, ...) (offline, fp32, CPU), runs the
tokens of BATCH (a safetensors file with `tokens` and the `logits` Troupe computed for them) and
compares the logits (relative L2 error below --tolerance); then reads every tensor of the
exported model.safetensors with the `safetensors` package and checks it equals the parameter
transformers loaded. Prints one line per check; exits 1 on the first failure.
"""
import argparse
import sys

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM


def main():
    p = argparse.ArgumentParser()
    p.add_argument("hf_dir")
    p.add_argument("batch")
    p.add_argument("--tolerance", type=float, default=1e-5)
    a = p.parse_args()

    model = AutoModelForCausalLM.from_pretrained(a.hf_dir, local_files_only=True, torch_dtype=torch.float32).eval()
    model.config._attn_implementation = "eager"
    batch = load_file(a.batch)
    with torch.no_grad():
        logits = model(input_ids=batch["tokens"]).logits.float()
    ref = batch["logits"].float()
    err = ((logits - ref).norm() / ref.norm()).item()
    print(f"logits relative error {err:.3e} (tolerance {a.tolerance:g})")
    if not err < a.tolerance:
        sys.exit(1)

    params = dict(model.named_parameters())
    count = 0
    with safe_open(f"{a.hf_dir}/model.safetensors", framework="pt") as f:
        for name in f.keys():
            t = f.get_tensor(name)
            if name not in params:
                print(f"tensor {name} is not a parameter of LlamaForCausalLM")
                sys.exit(1)
            if not torch.equal(t.float(), params[name].detach().float()):
                print(f"tensor {name} differs from what transformers loaded")
                sys.exit(1)
            count += 1
    expected = len(params)
    print(f"safetensors read {count} tensors; the model has {expected} parameters")
    if count != expected:
        sys.exit(1)


if __name__ == "__main__":
    main()
