# A torchtitan 0.3.0 config for Qwen3 30B-A3B cut to fit one GPU, to append to the kit's
# anchors.py (../shared/peers/torchtitan, carried as .device/torchtitan) on the GPU machine:
#   cat tools/bench/torchtitan_qwen3_moe_anchor.py >> .device/torchtitan/anchors.py
#   .device/torchtitan/run.sh qwen3_30b_a3b_short LOG
# Troupe's side: configs/qwen3_1.7b.toml with --model.name qwen3_moe --model.flavor 30B-A3B
# --model.n_layers 2 --model.aux_loss_coeff 0 --model.load_balance_coeff 0.001
# --activation_checkpoint.mode none (torchtitan's Qwen3 MoE has expert-bias balancing, no aux loss).
QWEN3_MOE_LAYERS = int(os.environ.get("TT_QWEN3_MOE_LAYERS", "2"))


def qwen3_30b_a3b_short() -> Trainer.Config:
    """torchtitan's own qwen3_30b_a3b recipe (128 experts of hidden 768, top 8, softmax routing
    renormalised, expert-bias balancing at 1e-3) cut to QWEN3_MOE_LAYERS layers; batch 4 x 4096,
    no activation checkpointing, compile on (model and loss), local data, the Qwen3 tokenizer."""
    from torchtitan.models.qwen3 import config_registry as Q

    c = Q.qwen3_30b_a3b()
    c.model_spec.model.layers = c.model_spec.model.layers[:QWEN3_MOE_LAYERS]
    c.hf_assets_path = QWEN3_TOK
    c.dump_folder = "/tmp/tt_out"
    c.dataloader = HuggingFaceTextDataLoader.Config(dataset="c4_test", dataset_path=DATA)
    c.training.local_batch_size = 4
    c.training.seq_len = 4096
    c.training.steps = STEPS
    c.lr_scheduler = LRSchedulersContainer.Config(warmup_steps=10)
    c.metrics = MetricsProcessor.Config(log_freq=10)
    c.checkpoint = CheckpointManager.Config(enable=False)
    c.compile = CompileConfig(enable=True, components=COMPILE)
    c.loss = _loss(c.model_spec)
    c.parallelism.spmd_backend = SPMD
    c.activation_checkpoint = None
    c.training.disable_cuda_graphs = True
    return c
