"""Atomic DeepSpeed checkpoints with a `latest` pointer, keep-last-K, and the state an exact resume needs.

Layout under ``<out_dir>/checkpoints/``:

    latest                      the tag of the newest COMPLETE checkpoint (plain text, DeepSpeed's format)
    align-step00000500/         one tag folder per checkpoint
        zero_pp_rank_*_model_states.pt, bf16_/zero_pp_rank_*_optim_states.pt   (DeepSpeed, one per rank)
        config.yaml             the resolved run config
        state.json              {"phase", "step", "phase_steps", "tag"}: written last, by rank 0

Atomicity: every rank writes its DeepSpeed files into the tag folder, then a barrier; rank 0 writes
config.yaml and state.json, then moves the pointer (write ``latest.tmp``, rename over ``latest``), then a
barrier. A crash at any moment leaves `latest` naming a checkpoint that every rank finished; a half-written
tag folder is never pointed to (and is overwritten when that step is saved again).

The DeepSpeed ``client_state`` of each rank holds what the engine cannot know: phase, step, the data
loader's position (the next sample to read) and the RNG states (python, numpy, torch, CUDA). Each rank
writes and reads its own model-states file under ZeRO-3, so per-rank states come back to the right rank.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from prealign_scale.config import Config, save_config

PHASE_ORDER = {"align": 0, "lm": 1}
LATEST = "latest"
STATE = "state.json"


def make_tag(phase: str, step: int) -> str:
    return f"{phase}-step{step:08d}"


@dataclass(frozen=True)
class CheckpointInfo:
    tag: str
    phase: str
    step: int
    phase_steps: int  # the phase's total steps when it was saved

    @property
    def phase_done(self) -> bool:
        return self.step >= self.phase_steps

    @property
    def order(self) -> tuple[int, int]:
        return PHASE_ORDER[self.phase], self.step


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class CheckpointManager:
    def __init__(self, out_dir: str | Path, keep_last: int):
        self.root = Path(out_dir) / "checkpoints"
        self.keep_last = keep_last

    # --- reading (no collectives) -------------------------------------------------------------------------
    def info(self, tag: str) -> CheckpointInfo | None:
        path = self.root / tag / STATE
        if not path.is_file():
            return None
        d = json.loads(path.read_text())
        return CheckpointInfo(tag=d["tag"], phase=d["phase"], step=int(d["step"]), phase_steps=int(d["phase_steps"]))

    def latest(self) -> CheckpointInfo | None:
        """The checkpoint the `latest` pointer names, or None for a fresh run folder."""
        pointer = self.root / LATEST
        if not pointer.is_file():
            return None
        tag = pointer.read_text().strip()
        info = self.info(tag)
        if info is None:
            raise RuntimeError(f"{pointer} names {tag!r}, but {self.root / tag / STATE} is missing: the "
                               "checkpoint folder was damaged after it was written; point `latest` at an older tag")
        return info

    def tags(self) -> list[CheckpointInfo]:
        found = [self.info(p.name) for p in self.root.iterdir() if p.is_dir()] if self.root.is_dir() else []
        return sorted((i for i in found if i is not None), key=lambda i: i.order)

    # --- writing (collective: every rank calls) -----------------------------------------------------------
    def save(self, engine, cfg: Config, *, phase: str, step: int, phase_steps: int, train_state: dict) -> str:
        """Checkpoint `engine` as tag <phase>-step<step>; `train_state` = loader position and counters."""
        tag = make_tag(phase, step)
        client_state = {"prealign": {"phase": phase, "step": step, "phase_steps": phase_steps,
                                     "train": train_state, "rng": rng_state()}}
        engine.save_checkpoint(str(self.root), tag=tag, client_state=client_state, save_latest=False)
        _barrier()  # every rank's files are on disk
        if _rank() == 0:
            save_config(cfg, self.root / tag / "config.yaml")
            state = {"tag": tag, "phase": phase, "step": step, "phase_steps": phase_steps}
            write_atomic(self.root / tag / STATE, json.dumps(state, indent=1) + "\n")
            write_atomic(self.root / LATEST, tag)
            self._prune(keep=tag)
        _barrier()
        return tag

    def _prune(self, keep: str) -> None:
        infos = self.tags()
        for info in infos[: max(0, len(infos) - self.keep_last)]:
            if info.tag != keep:
                shutil.rmtree(self.root / info.tag, ignore_errors=True)

    def load(self, engine, info: CheckpointInfo, *, restore_training_state: bool) -> dict:
        """Load weights + optimizer into a freshly built `engine`; return our client state.

        With `restore_training_state`, the RNG states are restored too; the caller restores
        ``ours["train"]`` (loader position, counters).
        """
        path, client = engine.load_checkpoint(str(self.root), tag=info.tag, load_optimizer_states=True,
                                              load_lr_scheduler_states=False)
        if path is None:
            raise RuntimeError(f"{self.root / info.tag}: DeepSpeed could not load this checkpoint")
        ours = client["prealign"]
        if restore_training_state:
            set_rng_state(ours["rng"])
        return ours
