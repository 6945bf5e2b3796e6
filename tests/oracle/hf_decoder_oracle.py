#!/usr/bin/env python3
"""Reference outputs from Hugging Face transformers' LlamaForCausalLM or Qwen3ForCausalLM, for
the C++ model tests.

  hf_decoder_oracle.py run OUT_DIR --family llama|qwen3 --dim ... : builds a randomly initialised
    model with those shapes, runs it in fp32 on the CPU on a random batch, and writes into OUT_DIR
      hf_model.safetensors  the model's state dict under HF names
      batch.safetensors     tokens, targets (int64) and the logits HF computed
      loss.json             {"loss": mean cross-entropy}
  hf_decoder_oracle.py count CONFIGS.json : CONFIGS.json is a list of {"family", config fields};
    prints one line per config: the parameter count of the model built on the meta device.
"""
import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F


def model_class(family):
    if family == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM
        return LlamaConfig, LlamaForCausalLM
    if family == "qwen3":
        from transformers import Qwen3Config, Qwen3ForCausalLM
        return Qwen3Config, Qwen3ForCausalLM
    if family == "deepseek_v3":
        from transformers import DeepseekV3Config, DeepseekV3ForCausalLM
        return DeepseekV3Config, DeepseekV3ForCausalLM
    if family == "qwen3_moe":
        from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM
        return Qwen3MoeConfig, Qwen3MoeForCausalLM
    raise SystemExit("unknown family " + family)


def count(path):
    with open(path) as f:
        configs = json.load(f)
    for c in configs:
        c = dict(c)
        config_class, model = model_class(c.pop("family"))
        with torch.device("meta"):
            m = model(config_class(**c))
        print(sum(p.numel() for p in m.parameters()))


def run(argv):
    p = argparse.ArgumentParser()
    p.add_argument("out_dir")
    p.add_argument("--family", default="llama")
    for name in ["dim", "layers", "heads", "kv_heads", "ffn", "vocab", "batch", "seq"]:
        p.add_argument("--" + name, type=int, required=True)
    p.add_argument("--head_dim", type=int, default=0, help="0: dim / heads")
    p.add_argument("--rope_theta", type=float, default=500000.0)
    p.add_argument("--norm_eps", type=float, default=1e-5)
    p.add_argument("--rope_factor", type=float, default=0.0, help="> 0: Llama 3.1 rope scaling")
    p.add_argument("--low_freq_factor", type=float, default=1.0)
    p.add_argument("--high_freq_factor", type=float, default=4.0)
    p.add_argument("--original_max_pos", type=int, default=8192)
    p.add_argument("--tied", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--experts", type=int, default=0, help="qwen3_moe: routed experts")
    p.add_argument("--top_k", type=int, default=0)
    p.add_argument("--moe_inter", type=int, default=0)
    p.add_argument("--norm_topk", action="store_true")
    p.add_argument("--sparse_step", type=int, default=1)
    p.add_argument("--dense_layers", type=int, default=0, help="the first N layers keep a dense MLP")
    p.add_argument("--aux_coef", type=float, default=0.0)
    p.add_argument("--q_lora", type=int, default=0, help="deepseek_v3: multi-head latent attention")
    p.add_argument("--kv_lora", type=int, default=0)
    p.add_argument("--nope", type=int, default=0)
    p.add_argument("--rope_dim", type=int, default=0)
    p.add_argument("--v_dim", type=int, default=0)
    p.add_argument("--shared", type=int, default=0)
    p.add_argument("--n_group", type=int, default=1)
    p.add_argument("--topk_group", type=int, default=1)
    p.add_argument("--route_scale", type=float, default=1.0)
    p.add_argument("--yarn_factor", type=float, default=0.0)
    p.add_argument("--yarn_mscale", type=float, default=1.0)
    a = p.parse_args(argv)

    torch.manual_seed(a.seed)
    rope = {"rope_type": "default", "rope_theta": a.rope_theta}
    if a.rope_factor > 0:
        rope = {"rope_type": "llama3", "rope_theta": a.rope_theta, "factor": a.rope_factor,
                "low_freq_factor": a.low_freq_factor, "high_freq_factor": a.high_freq_factor,
                "original_max_position_embeddings": a.original_max_pos}
    config_class, model_type = model_class(a.family)
    fields = dict(hidden_size=a.dim, intermediate_size=a.ffn, num_hidden_layers=a.layers,
                  num_attention_heads=a.heads, num_key_value_heads=a.kv_heads, vocab_size=a.vocab,
                  rms_norm_eps=a.norm_eps, rope_parameters=rope,
                  max_position_embeddings=max(2 * a.original_max_pos, a.seq),
                  tie_word_embeddings=a.tied, attention_bias=False)
    if a.head_dim:
        fields["head_dim"] = a.head_dim
    if a.family == "llama":
        fields["mlp_bias"] = False
    if a.family == "deepseek_v3":
        rope = {"rope_type": "default", "rope_theta": a.rope_theta}
        if a.yarn_factor > 0:
            rope = {"rope_type": "yarn", "rope_theta": a.rope_theta, "factor": a.yarn_factor,
                    "original_max_position_embeddings": a.original_max_pos, "beta_fast": 32.0, "beta_slow": 1.0,
                    "mscale": a.yarn_mscale, "mscale_all_dim": a.yarn_mscale}
        fields = dict(hidden_size=a.dim, intermediate_size=a.ffn, moe_intermediate_size=a.moe_inter,
                      num_hidden_layers=a.layers, num_attention_heads=a.heads, num_key_value_heads=a.heads,
                      n_shared_experts=a.shared, n_routed_experts=a.experts, routed_scaling_factor=a.route_scale,
                      kv_lora_rank=a.kv_lora, q_lora_rank=a.q_lora or None, qk_rope_head_dim=a.rope_dim,
                      v_head_dim=a.v_dim, qk_nope_head_dim=a.nope, n_group=a.n_group, topk_group=a.topk_group,
                      num_experts_per_tok=a.top_k, first_k_dense_replace=a.dense_layers, norm_topk_prob=a.norm_topk,
                      rope_interleave=True, rope_parameters=rope, vocab_size=a.vocab, rms_norm_eps=a.norm_eps,
                      tie_word_embeddings=a.tied, max_position_embeddings=max(a.seq, a.original_max_pos * 4),
                      attention_bias=False)
    if a.family == "qwen3_moe":
        fields.update(num_experts=a.experts, num_experts_per_tok=a.top_k, moe_intermediate_size=a.moe_inter,
                      norm_topk_prob=a.norm_topk, decoder_sparse_step=a.sparse_step,
                      mlp_only_layers=list(range(a.dense_layers)), router_aux_loss_coef=a.aux_coef,
                      output_router_logits=a.aux_coef > 0)
    config = config_class(**fields)
    config._attn_implementation = "eager"
    model = model_type(config).float().eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                param.copy_(1.0 + 0.1 * torch.randn_like(param))  # norm weights must matter too
            else:
                param.copy_(0.05 * torch.randn_like(param))
    tokens = torch.randint(0, a.vocab, (a.batch, a.seq))
    targets = torch.randint(0, a.vocab, (a.batch, a.seq))
    with torch.no_grad():
        out = model(input_ids=tokens)
        logits = out.logits.float()
    loss = F.cross_entropy(logits.reshape(-1, a.vocab), targets.reshape(-1))
    aux_loss = float(out.aux_loss) if getattr(out, "aux_loss", None) is not None else None

    from safetensors.torch import save_file
    os.makedirs(a.out_dir, exist_ok=True)
    params = dict(model.named_parameters())
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k in params or "experts" in k}
    # transformers 5 fuses each layer's experts (gate_up_proj [E, 2I, D], down_proj [E, D, I]);
    # checkpoints keep one tensor per expert, which is what Troupe reads and writes.
    for name in [k for k in state if k.endswith("mlp.experts.gate_up_proj")]:
        prefix = name[: -len("gate_up_proj")]
        gate_up, down = state.pop(name), state.pop(prefix + "down_proj")
        inter = gate_up.shape[1] // 2
        for e in range(gate_up.shape[0]):
            state[f"{prefix}{e}.gate_proj.weight"] = gate_up[e, :inter].contiguous()
            state[f"{prefix}{e}.up_proj.weight"] = gate_up[e, inter:].contiguous()
            state[f"{prefix}{e}.down_proj.weight"] = down[e].contiguous()
    if a.tied:
        state.pop("lm_head.weight", None)
    save_file(state, os.path.join(a.out_dir, "hf_model.safetensors"))
    save_file({"tokens": tokens, "targets": targets, "logits": logits.contiguous()},
              os.path.join(a.out_dir, "batch.safetensors"))
    with open(os.path.join(a.out_dir, "loss.json"), "w") as f:
        json.dump({"loss": loss.item(), "aux_loss": aux_loss}, f)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "count":
        count(sys.argv[2])
    elif len(sys.argv) > 1 and sys.argv[1] == "run":
        run(sys.argv[2:])
    else:
        raise SystemExit(__doc__)
