"""Atomic, verified DeepSpeed checkpoints with a `latest` pointer, keep-last-K, and the state an exact resume needs.

Layout under ``<out_dir>/checkpoints/``:

    latest                      the tag of the newest COMPLETE checkpoint (plain text, DeepSpeed's format)
    align-step00000500/         one tag folder per checkpoint
        zero_pp_rank_*_model_states.pt, bf16_/zero_pp_rank_*_optim_states.pt   (DeepSpeed, one per rank)
        config.yaml             the resolved run config
        state.json              {"phase", "step", "phase_steps", "tag"}
        manifest.json           size + sha256 of every file above (checkpoint_integrity.py)
        COMPLETE                the completeness marker: written last, names manifest.json's sha256
    lm-step00000008.damaged/    a tag found damaged at a start, set aside for inspection (never loaded)

Writing (every rank calls `save`): every rank writes its DeepSpeed files, then hashes and fsyncs them; the
digests (or the error, e.g. a full disk) are all-gathered, so every rank knows that every rank's files are on
disk. Rank 0 then writes config.yaml, state.json, manifest.json, COMPLETE, and moves the pointer (write
``latest.tmp``, rename over ``latest``). A failed write anywhere (ENOSPC, EIO, ...) is agreed by all ranks:
rank 0 removes the partial tag folder, `latest` keeps naming the previous checkpoint, and every rank raises
`CheckpointWriteError` with one message saying what happened and where. A crash at any moment leaves
`latest` naming a checkpoint that every rank finished.

Starting (every rank calls `resume_point`): the tag `latest` names is verified (marker, manifest, sizes and
sha256 of every file; the hashing is split over the ranks); if it is damaged (truncated file, missing marker,
flipped byte), the next older tag is tried, and so on, with a warning naming the damaged tag and the one used
instead. The damaged folders are renamed ``<tag>.damaged`` and `latest` is pointed at the tag used.

The DeepSpeed ``client_state`` of each rank holds what the engine cannot know: phase, step, the data
loader's position (the next sample to read) and the RNG states (python, numpy, torch, CUDA). Each rank
writes and reads its own model-states file under ZeRO-3, so per-rank states come back to the right rank.

Another data-parallel size than the one that wrote the tag (elastic resume): `load` converts the tag into a
DeepSpeed universal checkpoint and loads that, and hands the phase every old rank's client state to remap
the data position (elastic.py).
"""

from __future__ import annotations

import json
import random
import re
import shutil
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from prealign_scale.config import Config, save_config
from prealign_scale.engine.checkpoint_integrity import (
    STATE,
    check_files,
    describe_write_error,
    file_digest,
    read_manifest,
    write_atomic,
    write_manifest_and_marker,
)
from prealign_scale.engine.elastic import (
    ElasticResumeError,
    checkpoint_dp_size,
    old_client_states,
    remove_universal_copies,
    universal_copy,
    universal_loading,
)
from prealign_scale.engine.phases import PHASE_NAMES, PHASE_ORDER

LATEST = "latest"
DAMAGED_SUFFIX = ".damaged"
_TAG = re.compile(rf"^({'|'.join(PHASE_NAMES)})-step(\d{{8}})$")


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written; every rank raises it with the same one-line message."""


def make_tag(phase: str, step: int) -> str:
    return f"{phase}-step{step:08d}"


def tag_order(name: str) -> tuple[int, int] | None:
    """(phase order, step) of a tag folder name, or None when the name is not a tag."""
    m = _TAG.match(name)
    return (PHASE_ORDER[m.group(1)], int(m.group(2))) if m else None


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


# --- collectives that degrade to no-ops in a single process ---------------------------------------------------
def _dist_on() -> bool:
    return dist.is_available() and dist.is_initialized()


def _rank() -> int:
    return dist.get_rank() if _dist_on() else 0


def _world() -> int:
    return dist.get_world_size() if _dist_on() else 1


def _barrier() -> None:
    if _dist_on():
        dist.barrier()


def _all_gather_object(obj) -> list:
    if not _dist_on():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _broadcast_object(obj):
    """Rank 0's `obj` on every rank."""
    if not _dist_on():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _warn0(msg: str) -> None:
    if _rank() == 0:
        print(f"[prealign] WARNING: {msg}", file=sys.stderr, flush=True)


# --- the write guard ------------------------------------------------------------------------------------------
class _GuardedWriter:
    """Stands in for ``engine.checkpoint_engine`` during one save: records each written file's digest, and
    turns a failed write into a recorded error, so that this rank still goes through DeepSpeed's barriers
    with the others (an exception here would leave them waiting for this rank)."""

    def __init__(self, inner, folder: Path):
        self.inner, self.folder = inner, folder
        self.files: dict[str, dict] = {}
        self.error: str | None = None

    def save(self, state_dict, path) -> None:
        if self.error is not None:
            return  # this rank's storage already failed: write nothing more
        path = Path(path)
        try:
            self.inner.save(state_dict, str(path))
            try:
                name = path.relative_to(self.folder).as_posix()
            except ValueError:
                name = str(path)
            self.files[name] = file_digest(path, fsync=True)
        except Exception as exc:  # noqa: BLE001 - any failure must be agreed, not raised alone; torch.save
            # reports a full disk as a RuntimeError, not an OSError
            self.error = describe_write_error(exc, path)

    def guard_recovery_script(self, original):
        """DeepSpeed's rank 0 copies zero_to_fp32.py next to the tags on every save; the same guard."""

        def copy(save_path):
            if self.error is not None:
                return
            try:
                original(save_path)
            except Exception as exc:  # noqa: BLE001 - recorded and agreed by all ranks, as above
                self.error = describe_write_error(exc, Path(save_path) / "zero_to_fp32.py")

        return copy

    def __getattr__(self, name):  # create / commit / is_decoupled / load ...: DeepSpeed's own
        return getattr(self.inner, name)

    @contextmanager
    def installed(self, engine):
        original = engine._copy_recovery_script
        engine.checkpoint_engine = self
        engine._copy_recovery_script = self.guard_recovery_script(original)
        try:
            yield self
        finally:
            engine.checkpoint_engine = self.inner
            del engine.__dict__["_copy_recovery_script"]


class CheckpointManager:
    def __init__(self, out_dir: str | Path, keep_last: int):
        self.root = Path(out_dir) / "checkpoints"
        self.keep_last = keep_last
        self.fallbacks: list[tuple[str, str, str]] = []  # (damaged tag, why, tag used instead) of resume_point

    # --- reading (no collectives) -------------------------------------------------------------------------
    def info(self, tag: str) -> CheckpointInfo | None:
        path = self.root / tag / STATE
        if not path.is_file():
            return None
        d = json.loads(path.read_text())
        return CheckpointInfo(tag=d["tag"], phase=d["phase"], step=int(d["step"]), phase_steps=int(d["phase_steps"]))

    def pointer(self) -> str | None:
        """The tag `latest` names (not checked), or None when there is no pointer."""
        path = self.root / LATEST
        return path.read_text().strip() if path.is_file() else None

    def latest(self) -> CheckpointInfo | None:
        """The checkpoint the `latest` pointer names, or None for a fresh run folder (no verification)."""
        tag = self.pointer()
        if tag is None:
            return None
        info = self.info(tag)
        if info is None:
            raise RuntimeError(f"{self.root / LATEST} names {tag!r}, but {self.root / tag / STATE} is missing: the "
                               "checkpoint folder was damaged after it was written; point `latest` at an older tag")
        return info

    def tags(self) -> list[CheckpointInfo]:
        names = [p.name for p in self.root.iterdir() if p.is_dir() and tag_order(p.name)] if self.root.is_dir() else []
        found = [self.info(n) for n in names]
        return sorted((i for i in found if i is not None), key=lambda i: i.order)

    # --- verification (collective: every rank calls) ------------------------------------------------------
    def verify(self, tag: str) -> str | None:
        """None when the tag folder is intact (or a legacy folder without checksums), else what is wrong.

        The sha256 of the listed files are computed by the ranks in turn (file i on rank i % world).
        """
        folder = self.root / tag
        problem, files = read_manifest(folder)
        local = [problem] if problem else []
        if files is not None:
            local += check_files(folder, files, sorted(files)[_rank()::_world()])
        problems = list(dict.fromkeys(p for ps in _all_gather_object(local) for p in ps))
        if not problems:
            try:
                info = self.info(tag)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                return f"{STATE} unreadable: {exc}"
            if info is None or info.tag != tag:
                return f"{STATE} is missing or names another tag"
            if files is None:
                _warn0(f"checkpoint {tag} has no checksums (written by an older version): loading it unverified")
        return "; ".join(problems) or None

    def resume_point(self) -> CheckpointInfo | None:
        """The checkpoint to resume from: `latest`'s tag if intact, else the newest intact older tag.

        None for a fresh run folder (no `latest`). Each damaged tag gives a warning naming it and the tag
        tried next; damaged folders are renamed ``<tag>.damaged`` and `latest` is moved to the tag used.
        Raises RuntimeError when no intact checkpoint is left.
        """
        pointer = self.pointer()
        if pointer is None:
            return None
        names = sorted((p.name for p in self.root.iterdir() if p.is_dir() and tag_order(p.name)), key=tag_order,
                       reverse=True)
        if tag_order(pointer) is None:
            _warn0(f"{self.root / LATEST} holds {pointer[:80]!r}, not a checkpoint tag; trying the tags on disk")
            candidates = names
        else:
            candidates = [pointer] + [n for n in names if tag_order(n) < tag_order(pointer)]
        damaged: list[tuple[str, str]] = []
        chosen = None
        for tag in candidates:
            why = self.verify(tag)
            if why is None:
                chosen = tag
                break
            damaged.append((tag, why))
        if chosen is None:
            found = "; ".join(f"{t}: {w}" for t, w in damaged) or "no tag folders"
            raise RuntimeError(f"{self.root}: no intact checkpoint to resume from ({found}). Move this run folder "
                               "away (or delete its checkpoints/ folder) to start from scratch")
        self.fallbacks = [(bad, why, nxt) for (bad, why), nxt in zip(damaged, candidates[1:])]
        if damaged:
            for bad, why, nxt in self.fallbacks:
                _warn0(f"checkpoint {bad} is damaged ({why}); falling back to the previous checkpoint {nxt}")
            if _rank() == 0:
                for bad, _ in damaged:
                    self._set_aside(bad)
                write_atomic(self.root / LATEST, chosen)
            _barrier()
        return self.info(chosen)

    def _set_aside(self, tag: str) -> None:
        folder, dest = self.root / tag, self.root / (tag + DAMAGED_SUFFIX)
        if not folder.is_dir():
            return
        if dest.exists():
            shutil.rmtree(dest, ignore_errors=True)
        folder.rename(dest)
        _warn0(f"the damaged folder is kept as {dest} for inspection (delete it when done)")

    # --- writing (collective: every rank calls) -----------------------------------------------------------
    def save(self, engine, cfg: Config, *, phase: str, step: int, phase_steps: int, train_state: dict) -> str:
        """Checkpoint `engine` as tag <phase>-step<step>; `train_state` = loader position and counters.

        Raises CheckpointWriteError (on every rank) when any rank's write failed; `latest` then still names
        the previous checkpoint and the partial tag folder is removed.
        """
        tag = make_tag(phase, step)
        folder = self.root / tag
        rank0 = _rank() == 0
        if rank0 and folder.is_dir() and self.pointer() != tag:
            shutil.rmtree(folder, ignore_errors=True)  # leftovers of an unfinished save of this tag
        _barrier()
        client_state = {"prealign": {"phase": phase, "step": step, "phase_steps": phase_steps,
                                     "train": train_state, "rng": rng_state()}}
        guard = _GuardedWriter(engine.checkpoint_engine, folder)
        with guard.installed(engine):
            engine.save_checkpoint(str(self.root), tag=tag, client_state=client_state, save_latest=False)
        # every rank's files are on disk (fsynced), or its error is known to all
        reports = _all_gather_object({"error": guard.error, "files": guard.files})
        failures = [(r, rep["error"]) for r, rep in enumerate(reports) if rep["error"]]
        if rank0 and not failures:
            try:
                self._commit(cfg, tag, phase, step, phase_steps, reports)
            except OSError as exc:
                failures.append((0, describe_write_error(exc, Path(exc.filename or folder))))
        failures = _broadcast_object(failures)
        if failures:
            msg = self._failure_message(tag, failures)
            if rank0:
                shutil.rmtree(folder, ignore_errors=True)
            _barrier()
            raise CheckpointWriteError(msg)
        return tag

    def _commit(self, cfg: Config, tag: str, phase: str, step: int, phase_steps: int, reports: list[dict]) -> None:
        """Rank 0, after every rank's files are on disk: config, state, manifest, marker, then the pointer."""
        folder = self.root / tag
        save_config(cfg, folder / "config.yaml")
        state = {"tag": tag, "phase": phase, "step": step, "phase_steps": phase_steps}
        write_atomic(folder / STATE, json.dumps(state, indent=1) + "\n")
        # DeepSpeed's files of every rank (names relative to the tag folder), then rank 0's own two
        files = {name: d for rep in reports for name, d in rep["files"].items() if not name.startswith("/")}
        for name in ("config.yaml", STATE):
            files[name] = file_digest(folder / name, fsync=True)
        write_manifest_and_marker(folder, tag, files)
        write_atomic(self.root / LATEST, tag)
        remove_universal_copies(self.root)  # an elastic resume's converted copy (elastic.py) is not needed now
        self._prune(keep=tag)

    def _failure_message(self, tag: str, failures: list[tuple[int, str]]) -> str:
        rank, why = failures[0]
        others = f"; {len(failures) - 1} other rank(s) failed too" if len(failures) > 1 else ""
        prev = self.pointer()
        kept = (f"{self.root / LATEST} still names {prev}, which is untouched" if prev
                else "no earlier checkpoint exists")
        return (f"checkpoint {tag} could not be written: {why} (rank {rank}{others}). The partial folder "
                f"{self.root / tag} was removed; {kept}. Free some space (or fix the storage) and run the same "
                "command to resume")

    def _prune(self, keep: str) -> None:
        infos = self.tags()
        for info in infos[: max(0, len(infos) - self.keep_last)]:
            if info.tag != keep:
                shutil.rmtree(self.root / info.tag, ignore_errors=True)

    def dp_size(self, info: CheckpointInfo) -> int:
        """The data-parallel size that wrote the checkpoint (its count of model-states files)."""
        return checkpoint_dp_size(self.root / info.tag)

    def load(self, engine, info: CheckpointInfo, *, restore_training_state: bool) -> dict:
        """Load weights + optimizer into a freshly built `engine`; return our client state.

        With `restore_training_state`, the RNG states are restored too; the caller restores
        ``ours["train"]`` (loader position, counters). When the checkpoint was written by another
        data-parallel size, it is loaded through a universal copy (elastic.py); ``ours["from_ranks"]`` then
        holds every old rank's client state (the caller remaps the data position from them) and the RNG
        states are old rank ``r % N``'s.
        """
        from prealign_scale.model.parallel import dp_rank, dp_world_size, tp_world_size

        old, new = self.dp_size(info), dp_world_size()
        if old == new:
            path, client = engine.load_checkpoint(str(self.root), tag=info.tag, load_optimizer_states=True,
                                                  load_lr_scheduler_states=False)
            if path is None:
                raise RuntimeError(f"{self.root / info.tag}: DeepSpeed could not load this checkpoint")
            ours = client["prealign"]
        else:
            if tp_world_size() > 1:
                raise ElasticResumeError(
                    f"{self.root / info.tag} was written by {old} data-parallel ranks, this run has {new}: a "
                    f"change of rank count is not supported with model.tp={tp_world_size()}; resume it on "
                    f"{old * tp_world_size()} ranks (the rank count that wrote it)")
            _warn0(f"checkpoint {info.tag} was written by {old} data-parallel ranks, this run has {new}: "
                   f"converting it to a universal checkpoint ({self.root / 'universal' / info.tag}) and "
                   "continuing the epoch's remaining samples on the new ranks (elastic resume)")
            box = None
            if _rank() == 0:
                try:
                    box = (str(universal_copy(self.root, info.tag)), None)
                except Exception as exc:  # noqa: BLE001 - told to every rank, which all raise the same error
                    box = (None, f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:300]}")
            load_dir, error = _broadcast_object(box)
            if error is not None:
                raise ElasticResumeError(f"{self.root / info.tag} could not be converted to a universal checkpoint "
                                         f"({error}); resume it on {old} data-parallel ranks (the rank count "
                                         "that wrote it)")
            with universal_loading(engine):
                path, _ = engine.load_checkpoint(load_dir, tag=info.tag, load_optimizer_states=True,
                                                 load_lr_scheduler_states=False)
            if path is None:
                raise RuntimeError(f"{load_dir}/{info.tag}: DeepSpeed could not load this universal checkpoint")
            states = old_client_states(self.root / info.tag)
            ours = dict(states[dp_rank() % old], from_ranks=[s["train"] for s in states])
        if restore_training_state:
            set_rng_state(ours["rng"])
        return ours
