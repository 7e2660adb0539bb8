"""model.init_hf under tensor parallelism: `check(OUT_DIR)` on 2 in-process ranks (tests/distributed.py).

Rank 0 exports a tiny model with random weights (not megatron's initialisation of any seed) to OUT_DIR/hf.
Both ranks then build the tiny model with TP=2 inside ``deepspeed.zero.Init`` (ZeRO-3, DP=1) and load the
folder with `engine.hf_init.load_hf_weights`; the TP shards, gathered and merged, must equal the exported
weights exactly. Rank 0 returns its findings (the other rank None).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist

from prealign_scale import dist as pdist

VOCAB, SEQ = 1024, 64
DS = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "train_batch_size": 1,
      "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
      "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}}}


def check(out: str) -> dict | None:
    out = Path(out)
    pdist.init_process_group(pdist.discover(), 5.0, "gloo")
    import deepspeed

    from prealign_scale.engine.hf_init import load_hf_weights
    from prealign_scale.model.builder import build_gpt_model
    from prealign_scale.model.hf_convert import export_hf, merge_tp_shards
    from prealign_scale.model.parallel import dp_world_size, init_model_parallel, tp_world_size
    from prealign_scale.model.presets import get_preset

    tiny = get_preset("tiny")
    init_model_parallel(1, seed=0)
    ref = build_gpt_model(tiny, VOCAB, SEQ)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    ref_sd = {k: v for k, v in ref.state_dict().items() if isinstance(v, torch.Tensor)}
    if dist.get_rank() == 0:
        export_hf(ref.state_dict(), tiny, VOCAB, SEQ, out / "hf")
    dist.barrier()

    init_model_parallel(2, seed=0)
    model = build_gpt_model(tiny, VOCAB, SEQ, ds_config=DS)
    loaded = load_hf_weights(model, out / "hf", tiny)
    params = list(model.named_parameters())
    with deepspeed.zero.GatheredParameters([p for _, p in params], modifier_rank=None):
        shard = {name: p.detach().clone() for name, p in params}
    shards: list = [None, None]
    dist.all_gather_object(shards, shard)
    merged = merge_tp_shards(shards)
    if dist.get_rank() != 0:
        return None
    equal = {k: bool(torch.equal(merged[k], ref_sd[k])) for k in ref_sd}
    return {"tp": tp_world_size(), "dp": dp_world_size(), "loaded": loaded,
            "qkv_rows": int(shard["decoder.layers.0.self_attention.linear_qkv.weight"].shape[0]),
            "all_equal": all(equal.values()), "differ": [k for k, ok in equal.items() if not ok]}
