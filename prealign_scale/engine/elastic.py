"""Elastic resume: continue a checkpoint written by N data-parallel ranks on M ranks.

A ZeRO-3 checkpoint holds each rank's slice of the fp32 weights and of the Adam moments, cut for N ranks;
DeepSpeed refuses to load it on another data-parallel size. When `checkpoint.CheckpointManager.load` sees
that the tag was written by another data-parallel size (the number of ``zero_pp_rank_*_mp_rank_00_model_states.pt``
files), it converts the tag once into a DeepSpeed *universal checkpoint* (``deepspeed.checkpoint.ds_to_universal``:
one folder per parameter with its full fp32 weights, ``exp_avg``, ``exp_avg_sq`` and the step) under
``checkpoints/universal/<tag>/``, and loads that with DeepSpeed's ``load_universal`` switch on, which cuts the
full tensors again for the M ranks. Weights and optimizer state come back exactly (nothing is reset); only the
floating-point summation order of later reductions differs.

What DeepSpeed cannot remap is ours (`old_client_states`): each old rank's client state (phase, step, data
position, RNG states) is read from its own model-states file. The phase remaps the data position
(`ShardLoader.load_remapped_state`, `DictionaryLoader.load_remapped_state`: the rest of the epoch is read
exactly once); new rank r takes old rank ``r % N``'s RNG states.

The conversion runs on rank 0 while the others wait at a barrier (a few seconds for the tiny preset; at scale
it reads and writes the whole checkpoint once: keep it under ``dist.timeout_minutes``). The universal copy is
removed by the next checkpoint commit. Tensor parallelism (``model.tp > 1``) is not remapped: DeepSpeed's
converter needs megatron's TP layout, which this project does not describe to it; such a resume is refused.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shutil
from pathlib import Path

import torch

from prealign_scale.engine.checkpoint_integrity import write_atomic

UNIVERSAL = "universal"  # checkpoints/universal/<tag>/: the converted copy of a tag
_MODEL_STATES = re.compile(r"^zero_pp_rank_(\d+)_mp_rank_00_model_states\.pt$")


class ElasticResumeError(RuntimeError):
    """A checkpoint cannot be continued on this rank count; the message says what to do instead."""


def checkpoint_dp_size(folder: Path) -> int:
    """The data-parallel size that wrote the tag folder: its count of ZeRO-3 model-states files (TP rank 0)."""
    return sum(1 for p in folder.iterdir() if _MODEL_STATES.match(p.name))


def old_client_states(folder: Path) -> list[dict]:
    """Our client state ("prealign": phase, step, train, rng) of every old data-parallel rank, in rank order."""
    n = checkpoint_dp_size(folder)
    out = []
    for r in range(n):
        sd = torch.load(folder / f"zero_pp_rank_{r}_mp_rank_00_model_states.pt", map_location="cpu",
                        weights_only=False)
        out.append(sd["prealign"])
    return out


def universal_copy(root: Path, tag: str) -> Path:
    """Convert checkpoints/<tag> into checkpoints/universal/<tag> (once: a finished copy has COMPLETE).

    Rank 0 only. DeepSpeed's converter prints its progress; it goes to ``convert.log`` in the copy.
    Returns the folder that DeepSpeed's ``load_checkpoint`` takes as its load_dir.
    """
    from deepspeed.checkpoint import ds_to_universal

    load_dir = root / UNIVERSAL
    out = load_dir / tag
    if (out / "COMPLETE").is_file():
        return load_dir
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    args = argparse.Namespace(input_folder=str(root / tag), output_folder=str(out), num_extract_workers=1,
                              num_merge_workers=1, keep_temp_folder=False, strict=True, inject_missing_state=False)
    log = io.StringIO()
    with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        ds_to_universal.main(args)
    (out / "convert.log").write_text(log.getvalue())
    write_atomic(out / "COMPLETE", tag + "\n")
    return load_dir


@contextlib.contextmanager
def universal_loading(engine):
    """DeepSpeed's ``checkpoint.load_universal`` switch, on for one load_checkpoint call only (saving and
    later loads of this run's own checkpoints are the normal ones)."""
    engine._config.load_universal_checkpoint = True
    try:
        yield
    finally:
        engine._config.load_universal_checkpoint = False


def remove_universal_copies(root: Path) -> None:
    """After a checkpoint of the new rank count is committed, the converted copies are not needed."""
    shutil.rmtree(root / UNIVERSAL, ignore_errors=True)
