"""2-rank checks of the model room: tests/test_model_build.py runs `check` on 2 in-process ranks
(tests/distributed.py: gloo, DS_ACCELERATOR=cpu).

Part 1, tensor parallelism (TP=2, DP=1): each rank builds the tiny model; the TP shards merged by
`merge_tp_shards` must equal the TP=1 model built from the same seed, and the TP=2 logits (gathered over the
vocabulary) must equal the TP=1 logits.
Part 2, ZeRO-3 (TP=1, DP=2): `build_gpt_model(ds_config=...)` with persistence threshold 0 must give each rank
half of every parameter, with megatron's initialisation (gathered parameters equal the unpartitioned model of
the same seed); one forward through `deepspeed.initialize(..., mpu=MegatronMPU())` matches that model's logits.
Each rank returns its findings; the test asserts on them.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from prealign_scale.model.builder import build_gpt_model
from prealign_scale.model.hf_convert import merge_tp_shards
from prealign_scale.model.parallel import (
    MegatronMPU,
    destroy_model_parallel,
    dp_world_size,
    init_model_parallel,
)
from prealign_scale.model.presets import get_preset

SEED = 1234
VOCAB = 1024
SEQ = 16


def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(0, VOCAB, (2, SEQ), generator=g)
    return ids, torch.arange(SEQ).expand(2, SEQ)


def reference_model():
    """The TP=1, unpartitioned model of SEED (each rank builds its own copy)."""
    init_model_parallel(1, seed=SEED)
    return build_gpt_model(get_preset("tiny"), VOCAB, 64).eval()


def part_tp(report: dict) -> None:
    ref = reference_model()
    ids, pos = inputs()
    with torch.no_grad():
        ref_logits = ref(ids, pos, None)
    ref_sd = {k: v for k, v in ref.state_dict().items() if isinstance(v, torch.Tensor)}

    init_model_parallel(2, seed=SEED)
    model = build_gpt_model(get_preset("tiny"), VOCAB, 64).eval()
    shard = {k: v for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    shards: list = [None, None]
    dist.all_gather_object(shards, shard)
    merged = merge_tp_shards(shards)
    report["tp_shard_rows_qkv"] = shard["decoder.layers.0.self_attention.linear_qkv.weight"].shape[0]
    report["tp_merged_equal"] = sorted(merged) == sorted(ref_sd) and all(
        torch.equal(merged[k], ref_sd[k]) for k in ref_sd)
    with torch.no_grad():
        local = model(ids, pos, None)  # [b, s, V / 2]
    parts = [torch.empty_like(local) for _ in range(2)]
    dist.all_gather(parts, local)
    full = torch.cat(parts, dim=-1)
    report["tp_logits_maxdiff"] = (full - ref_logits).abs().max().item()
    destroy_model_parallel()


def part_zero3(report: dict) -> None:
    import deepspeed

    ref = reference_model()
    ref_params = dict(ref.named_parameters())
    ids, pos = inputs()
    with torch.no_grad():
        ref_logits = ref(ids, pos, None)

    init_model_parallel(1, seed=SEED)
    ds_config = {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "train_batch_size": 2,
        "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}},
    }
    model = build_gpt_model(get_preset("tiny"), VOCAB, 64, ds_config=ds_config)
    report["dp_world_size"] = dp_world_size()
    halves, empty = {}, {}
    for name, p in model.named_parameters():
        halves[name] = [p.ds_tensor.numel(), p.ds_numel]
        empty[name] = p.numel()
    report["zero3_shard_numels"] = halves
    report["zero3_local_numels"] = empty

    stats, equal = {}, {}
    params = list(model.named_parameters())
    with deepspeed.zero.GatheredParameters([p for _, p in params], modifier_rank=None):
        for name, p in params:
            stats[name] = [p.float().mean().item(), p.float().std().item(), p.numel()]
            equal[name] = torch.equal(p.detach(), ref_params[name].detach())
    report["zero3_stats"] = stats
    report["zero3_equal_to_reference"] = equal

    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds_config,
                                      mpu=MegatronMPU())
    engine.eval()
    # The per-layer hidden-state recipe of builder.py: forward hooks, sequence-first [s, b, h].
    shapes: dict[str, list[int]] = {}

    def hook(name):
        def record(_module, _inputs, output):
            out = output[0] if isinstance(output, tuple) else output
            shapes[name] = list(out.shape)
        return record

    handles = [model.embedding.register_forward_hook(hook("embedding")),
               model.decoder.layers[1].register_forward_hook(hook("layer1")),
               model.decoder.final_layernorm.register_forward_hook(hook("final_norm"))]
    with torch.no_grad():
        logits = engine(ids, pos, None)
    for handle in handles:
        handle.remove()
    report["zero3_logits_maxdiff"] = (logits - ref_logits).abs().max().item()
    report["zero3_hook_shapes"] = shapes


def check() -> dict:
    """One rank's report (the process group is running: the helper started it)."""
    report: dict = {"rank": dist.get_rank(), "world": dist.get_world_size()}
    part_tp(report)
    part_zero3(report)
    destroy_model_parallel()
    return report
