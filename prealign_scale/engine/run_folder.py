"""The run folder (``run.out_dir``): its layout and the completion marker the run writes last.

    config.yaml        the resolved config of the latest start (run.py)
    metrics.jsonl      one line per logged step (callbacks.py)
    tensorboard/       event files (when tensorboard is installed)
    checkpoints/       DeepSpeed checkpoints + `latest` pointer (checkpoint.py)
    hf/                the exported LlamaForCausalLM folder, when the last phase has finished (export.py)
    DONE               written last, when every phase is trained and exported (`mark_finished`)
    LOCK               while a job trains in the folder: its host, pid, start time, SLURM job id (`acquire_lock`)
    eval/              the evaluator's results (launchers/evaluate.py), when evaluated

The engine owns this layout and writes ``DONE``; the launch layer (prealign_scale/launch/: sweeps, SLURM
tasks) only reads it through `run_is_finished` to skip finished runs. A run folder without ``DONE`` is new,
partial or pre-empted (a re-run resumes it from its latest checkpoint).

The lock: rank 0 takes ``LOCK`` (created with O_EXCL) before the run writes anything, and removes it when the
run ends, however it ends (a SIGKILL leaves it behind). A second job on the same folder is refused with one
line naming the holder. A lock left behind is taken over, with a warning, when it is stale: its host is this
host and its pid is no longer running, or it names this job's SLURM job id (a requeued job, on any node).
Any other lock is respected; if its job is really gone (a node lost), delete the file by hand.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

DONE_MARKER = "DONE"
LOCK_FILE = "LOCK"


class RunFolderBusy(Exception):
    """Another job holds the run folder's lock (the message is one line naming it)."""


def done_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / DONE_MARKER


def run_is_finished(run_dir: str | Path) -> bool:
    """True when the engine marked the run folder finished (every phase trained, export written)."""
    return done_path(run_dir).is_file()


def mark_finished(run_dir: str | Path, info: dict | None = None) -> Path:
    """Write the completion marker (the engine calls this on rank 0 as its very last step)."""
    path = done_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(info or {}, sort_keys=True) + "\n")
    tmp.replace(path)
    return path


def _this_holder() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID")}


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # running, as another user
        return True
    return True


def _stale_reason(held: dict, me: dict) -> str | None:
    """Why the lock `held` may be taken over by `me`, or None when its job may still be running."""
    if held.get("slurm_job_id") and held.get("slurm_job_id") == me["slurm_job_id"]:
        return f"it names this SLURM job {me['slurm_job_id']} (a requeued job)"
    if held.get("host") == me["host"]:
        if held.get("pid") == me["pid"]:
            return "it is this process's own"
        if isinstance(held.get("pid"), int) and not _pid_running(held["pid"]):
            return f"process {held['pid']} on this host is not running"
    return None


def acquire_lock(run_dir: str | Path) -> str | None:
    """Take ``<run_dir>/LOCK`` for this process. Returns a warning when a stale lock was taken over (else
    None); raises `RunFolderBusy` when another job holds it."""
    path = Path(run_dir) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    me, warning = _this_holder(), None
    for _ in range(3):  # a stale lock removed by two jobs at once: O_EXCL lets one of them in
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                held = json.loads(path.read_text())
            except (OSError, ValueError):  # vanished, or being written by the job that just took it
                held = {}
            why = _stale_reason(held, me) if held else None
            if why is None:
                who = (f"host {held.get('host')}, pid {held.get('pid')}, started {held.get('started')}"
                       + (f", SLURM job {held['slurm_job_id']}" if held.get("slurm_job_id") else "")) if held \
                    else "an unreadable lock"
                raise RunFolderBusy(
                    f"run.out_dir {run_dir} is in use by another job ({path}: {who}); wait for it to end or use "
                    f"another run.out_dir. If that job is gone (e.g. its node was lost), delete {path}") from None
            warning = f"WARNING: took over the stale lock {path} ({why})"
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(me, sort_keys=True) + "\n")
        return warning
    raise RunFolderBusy(f"run.out_dir {run_dir}: could not take {path} (other jobs keep taking it)")


def release_lock(run_dir: str | Path) -> None:
    """Remove ``<run_dir>/LOCK`` if this process holds it."""
    path = Path(run_dir) / LOCK_FILE
    try:
        held = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if held.get("host") == socket.gethostname() and held.get("pid") == os.getpid():
        path.unlink(missing_ok=True)
