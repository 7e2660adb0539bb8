"""Consolidated fp32 weights -> an HF LlamaForCausalLM folder (or a torch file): of a live ZeRO-3 engine at
the end of a run (`export_run`), or of a checkpoint folder, offline and verified (`export_checkpoint`).

Every parameter's fp32 master copy is gathered over the data-parallel group with DeepSpeed's
``safe_get_full_fp32_param`` (a collective: all ranks call it, parameter by parameter, so no rank ever
holds more than one gathered parameter besides rank 0's growing CPU copy). With tensor parallelism the
DP-rank-0 ranks of each TP group send their shards to global rank 0, which merges them
(`hf_convert.merge_tp_shards`). Rank 0 writes ``<out_dir>/hf.tmp`` with `hf_convert.export_hf` (weights,
config, tokenizer) and renames it to ``<out_dir>/hf``.

From a checkpoint (`launchers/export_fp32.py RUN [--tag TAG]`, one process, no GPU): the tag folder is
verified first against its manifest (checkpoint_integrity.py: the completeness marker, then the size and
sha256 of every file); a damaged one is refused with `CheckpointDamagedError`, one line naming the file. Then
DeepSpeed's ``get_fp32_state_dict_from_zero_checkpoint`` merges every rank's fp32 slices, and the weights are
written the way `export_run` writes them (the same names, the same HF conversion), with the tag's own
config.yaml (preset, vocabulary, tokenizer). TP=1 checkpoints only (DeepSpeed's merger reads mp_rank 00).
This replaces DeepSpeed's ``checkpoints/zero_to_fp32.py`` (copied there on every save), which checks nothing.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
import torch.distributed as dist

from prealign_scale.config import Config, parse_config
from prealign_scale.engine.checkpoint_integrity import check_files, read_manifest


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
    sd = gather_fp32_state_dict(engine)
    folder = None
    if dist.get_rank() == 0:
        folder = write_hf(sd, cfg, out_dir / "hf", vocab_size)
    dist.barrier()
    return folder


def write_hf(sd: dict, cfg: Config, folder: Path, vocab_size: int) -> Path:
    """The HF folder of fp32 weights `sd` (megatron names): written as ``<folder>.tmp``, then renamed."""
    from prealign_scale.model.hf_convert import export_hf
    from prealign_scale.model.presets import get_preset

    ids = {}
    if cfg.data.tokenizer_dir:
        from prealign_scale.text.tokenizer import load_tokenizer

        tok = load_tokenizer(cfg.data.tokenizer_dir)
        ids = {"bos_id": tok.bos_token_id, "eos_id": tok.eos_token_id, "pad_id": tok.pad_token_id}
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    export_hf(sd, get_preset(cfg.model.preset), vocab_size, int(cfg.model.seq_len), tmp,
              tokenizer_dir=cfg.data.tokenizer_dir, **ids)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


class CheckpointDamagedError(RuntimeError):
    """The checkpoint to export is missing or fails its manifest; the message names the file."""


def verified_checkpoint(run_dir: Path, tag: str | None = None) -> Path:
    """The tag folder (default: the one ``checkpoints/latest`` names), verified against its manifest."""
    root = Path(run_dir) / "checkpoints"
    if tag is None:
        latest = root / "latest"
        if not latest.is_file():
            raise CheckpointDamagedError(f"{latest}: no such file; is {run_dir} a run folder with a checkpoint?")
        tag = latest.read_text().strip()
    folder = root / tag
    problem, files = read_manifest(folder)
    if problem is None and files is None:
        raise CheckpointDamagedError(f"{folder}: no manifest.json (written before checksums existed): it cannot "
                                     "be verified; DeepSpeed's zero_to_fp32.py reads it unchecked")
    problems = [problem] if problem else check_files(folder, files, sorted(files))
    if problems:
        raise CheckpointDamagedError(f"{folder}: damaged, not exported: {problems[0]}"
                                     + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
    return folder


def export_checkpoint(run_dir: Path, tag: str | None = None, out: Path | None = None, *,
                      torch_file: bool = False) -> Path:
    """Verify a checkpoint, consolidate its fp32 weights, write an HF folder (default ``RUN/hf-<tag>``) or,
    with `torch_file`, a torch state dict (default ``RUN/fp32-<tag>.pt``). Returns what was written."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    folder = verified_checkpoint(run_dir, tag)
    cfg = parse_config(folder / "config.yaml")
    if int(cfg.model.tp) != 1:
        raise CheckpointDamagedError(f"{folder}: model.tp={cfg.model.tp}; only TP=1 checkpoints can be "
                                     "consolidated offline (export the run itself: run.export_hf)")
    sd = get_fp32_state_dict_from_zero_checkpoint(str(folder.parent), tag=folder.name)
    sd = {k: v.to(torch.float32) for k, v in sd.items()}
    if torch_file:
        out = Path(out or Path(run_dir) / f"fp32-{folder.name}.pt")
        tmp = out.with_name(out.name + ".tmp")
        torch.save(sd, tmp)
        tmp.rename(out)
        return out
    return write_hf(sd, cfg, Path(out or Path(run_dir) / f"hf-{folder.name}"), int(cfg.model.vocab_size))
