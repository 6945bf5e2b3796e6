#!/usr/bin/env python3
"""Checks a Hugging Face folder that `troupe checkpoint export --hf` wrote.

Loads it with transformers' AutoModelForCausalLM.from_pretrained (LlamaForCausalLM, Qwen3ForCausalLM, ...) (offline, fp32, CPU), runs the
tokens of BATCH (a safetensors file with `tokens` and the `logits` Troupe computed for them) and
compares the logits (relative L2 error below --tolerance); then reads every tensor of the
exported model.safetensors with the `safetensors` package and checks it equals the parameter
transformers loaded. Prints one line per check; exits 1 on the first failure.
"""
import argparse
import re
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
    buffers = dict(model.named_buffers())  # DeepSeek V3's gate bias is one
    covered = set()
    count = mtp = 0
    layers = model.config.num_hidden_layers
    layer = re.compile(r"model\.layers\.(\d+)\.")
    expert = re.compile(r"(.*\.mlp\.experts\.)(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")
    with safe_open(f"{a.hf_dir}/model.safetensors", framework="pt") as f:
        for name in f.keys():
            t = f.get_tensor(name)
            n = layer.match(name)
            if n and int(n.group(1)) >= layers and name not in params:
                mtp += 1  # DeepSeek V3's multi-token prediction blocks, which transformers does not model
                continue
            loaded, where = params.get(name), name
            if loaded is None and name in buffers:
                if not torch.equal(t.float(), buffers[name].float()):
                    print(f"buffer {name} differs from what transformers loaded")
                    sys.exit(1)
                count += 1
                continue
            m = expert.match(name)
            if loaded is None and m and m.group(1) + "gate_up_proj" in params:
                # transformers 5 fuses a layer's experts: [E, 2I, D] gate then up, [E, D, I] down.
                prefix, e, kind = m.group(1), int(m.group(2)), m.group(3)
                where = prefix + ("down_proj" if kind == "down_proj" else "gate_up_proj")
                fused = params[where][e]
                inter = fused.shape[0] // 2
                loaded = fused if kind == "down_proj" else fused[:inter] if kind == "gate_proj" else fused[inter:]
            if loaded is None:
                print(f"tensor {name} is not a parameter of {type(model).__name__}")
                sys.exit(1)
            if not torch.equal(t.float(), loaded.detach().float()):
                print(f"tensor {name} differs from what transformers loaded")
                sys.exit(1)
            covered.add(where)
            count += 1
    expected = len(params)
    print(f"safetensors read {count} tensors, covering {len(covered)} of the model's {expected} parameters"
          + (f", and {mtp} of multi-token prediction blocks after its last layer" if mtp else ""))
    if len(covered) != expected:
        sys.exit(1)


if __name__ == "__main__":
    main()
