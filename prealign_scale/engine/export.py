"""End of run: the consolidated fp32 weights of a live ZeRO-3 engine -> an HF LlamaForCausalLM folder.

Every parameter's fp32 master copy is gathered over the data-parallel group with DeepSpeed's
``safe_get_full_fp32_param`` (a collective: all ranks call it, parameter by parameter, so no rank ever
holds more than one gathered parameter besides rank 0's growing CPU copy). With tensor parallelism the
DP-rank-0 ranks of each TP group send their shards to global rank 0, which merges them
(`hf_convert.merge_tp_shards`). Rank 0 writes ``<out_dir>/hf.tmp`` with `hf_convert.export_hf` (weights,
config, tokenizer) and renames it to ``<out_dir>/hf``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
import torch.distributed as dist

from prealign_scale.config import Config


def gather_fp32_state_dict(engine) -> dict | None:
    """The TP-merged fp32 state dict on global rank 0 (None elsewhere). Collective."""
    from deepspeed.utils import safe_get_full_fp32_param

    from prealign_scale.model.hf_convert import merge_tp_shards
    from prealign_scale.model.parallel import dp_rank, tp_group, tp_rank, tp_world_size

    keep = dp_rank() == 0
    sd: dict = {}
    for name, p in engine.module.named_parameters():
        full = safe_get_full_fp32_param(p)
        if keep:
            sd[name] = full.detach().to("cpu", torch.float32).clone()
    if tp_world_size() > 1 and keep:  # every rank of a TP group has the same DP rank
        shards = [None] * tp_world_size()
        dst = dist.get_global_rank(tp_group(), 0)
        dist.gather_object(sd, shards if tp_rank() == 0 else None, dst=dst, group=tp_group())
        sd = merge_tp_shards(shards) if tp_rank() == 0 else {}
    return sd if dist.get_rank() == 0 else None


def export_run(engine, cfg: Config, out_dir: Path, vocab_size: int) -> Path | None:
    """Write <out_dir>/hf from `engine` (collective). Returns the folder on rank 0, None elsewhere."""
    from prealign_scale.model.hf_convert import export_hf
    from prealign_scale.model.presets import get_preset

    sd = gather_fp32_state_dict(engine)
    folder = None
    if dist.get_rank() == 0:
        ids = {}
        if cfg.data.tokenizer_dir:
            from prealign_scale.text.tokenizer import load_tokenizer

            tok = load_tokenizer(cfg.data.tokenizer_dir)
            ids = {"bos_id": tok.bos_token_id, "eos_id": tok.eos_token_id, "pad_id": tok.pad_token_id}
        tmp, folder = out_dir / "hf.tmp", out_dir / "hf"
        shutil.rmtree(tmp, ignore_errors=True)
        export_hf(sd, get_preset(cfg.model.preset), vocab_size, int(cfg.model.seq_len), tmp,
                  tokenizer_dir=cfg.data.tokenizer_dir, **ids)
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    dist.barrier()
    return folder
