"""Helpers of tests/test_fault_tolerance.py: the run config, launching, faults to inject, the figures file.

The tiny phase-2 run of every fault test: 8 LM steps on 2 CPU ranks (ZeRO-3, gloo), a checkpoint every 2
steps, all 4 kept (lm-step2/4/6/8), no HF export. An uninterrupted run of it is the reference the
recovered runs are compared with, bitwise (as in tests/test_engine_resume.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
from engine_common import ROOT, cpu_env, deepspeed_cmd, write_run_config

from prealign_scale.dist import free_port

HANG_GUARD_S = 900  # generous: a launch takes 15-280 s on a shared, loaded 2-core machine; only a hang exceeds it
STEPS, CKPT_EVERY = 8, 2


def fault_config(path: Path, data: dict, out_dir: Path, **lm) -> Path:
    return write_run_config(path, data, out_dir, lm={"steps": STEPS, **lm},
                            run={"phase": "lm", "export_hf": False, "tensorboard": False, "ckpt_every": CKPT_EVERY,
                                 "keep_last": STEPS // CKPT_EVERY})


def launch(config: Path, *overrides: str) -> tuple[int, str, float]:
    """(exit status, combined output, seconds) of the real `deepspeed` launcher on 2 CPU ranks."""
    t0 = time.monotonic()
    proc = subprocess.run(deepspeed_cmd(free_port(), config, *overrides), check=False, cwd=ROOT, env=cpu_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=HANG_GUARD_S)
    return proc.returncode, proc.stdout, time.monotonic() - t0


def start_launcher(config: Path, log: Path) -> subprocess.Popen:
    with open(log, "w") as f:  # a file, not a pipe: nobody reads while the test waits
        return subprocess.Popen(deepspeed_cmd(free_port(), config), cwd=ROOT, env=cpu_env(), stdout=f,
                                stderr=subprocess.STDOUT, text=True)


def rank_processes(launcher: subprocess.Popen) -> dict[int, object]:
    """{local rank: psutil.Process} of the training processes the deepspeed launcher started."""
    import psutil

    found = {}
    for child in psutil.Process(launcher.pid).children(recursive=True):
        try:
            cmd = child.cmdline()
        except psutil.Error:
            continue
        ranks = [int(a.split("=", 1)[1]) for a in cmd if a.startswith("--local_rank=")]  # not launch.py's own
        if ranks and any(a.endswith("launchers/pretrain.py") for a in cmd):
            found[ranks[0]] = child
    return found


def wait_for(predicate, what: str, timeout: float = HANG_GUARD_S, every: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


def metric_lines(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.is_file() else 0


# --- light 2-rank jobs over the engine's process groups (tests/dist_scripts/peer_fault.py) -------------------
def start_peer_pair(timeout_minutes: float) -> list[subprocess.Popen]:
    port, procs = free_port(), []
    for rank in range(2):
        env = cpu_env(RANK=rank, LOCAL_RANK=rank, WORLD_SIZE=2, LOCAL_WORLD_SIZE=2, MASTER_PORT=port)
        procs.append(subprocess.Popen([sys.executable, "tests/dist_scripts/peer_fault.py", str(timeout_minutes)],
                                      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    return procs


def read_until_ready(proc: subprocess.Popen) -> None:
    """Read the rank's output (warnings, ...) up to its READY line."""
    seen = []
    for line in proc.stdout:
        if line.strip() == "READY":
            return
        seen.append(line)
    raise AssertionError("the rank exited before READY:\n" + "".join(seen)[-4000:])


def failure_record(output: str) -> dict:
    """The JSON line peer_fault.py prints when its collective fails."""
    return next(json.loads(x) for x in output.splitlines() if x.startswith("{"))


def kill_quietly(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)


# --- damage -----------------------------------------------------------------------------------------------------
def truncate_half(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


def flip_byte(path: Path) -> None:
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2)
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 0xFF]))


def truncate_shard_inside_sample(path: Path, sample: int) -> str:
    """Cut a shard in the middle of sample `sample`'s first member; returns the key of the last whole sample."""
    with tarfile.open(path) as tf:
        members = tf.getmembers()
    keys = list(dict.fromkeys(m.name.split(".")[0] for m in members))
    first = next(m for m in members if m.name.split(".")[0] == keys[sample])
    with open(path, "r+b") as f:
        f.truncate(first.offset_data + first.size // 2)
    return keys[sample - 1]


# --- comparing checkpoints -----------------------------------------------------------------------------------
def _differences(x, y, path: str) -> list[str]:
    import torch

    if type(x) is not type(y):
        return [f"{path}: {type(x).__name__} vs {type(y).__name__}"]
    if isinstance(x, dict):
        if list(x) != list(y):
            return [f"{path}: keys {list(x)} vs {list(y)}"]
        return [d for k in x for d in _differences(x[k], y[k], f"{path}/{k}")]
    if isinstance(x, (list, tuple)):
        if len(x) != len(y):
            return [f"{path}: length {len(x)} vs {len(y)}"]
        return [d for i, (u, v) in enumerate(zip(x, y)) for d in _differences(u, v, f"{path}[{i}]")]
    if torch.is_tensor(x):
        same = x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y)
        return [] if same else [f"{path}: tensors differ"]
    if isinstance(x, np.ndarray):
        return [] if x.dtype == y.dtype and np.array_equal(x, y) else [f"{path}: arrays differ"]
    if hasattr(x, "__dict__") and not isinstance(x, type):
        return _differences(vars(x), vars(y), f"{path}.__dict__")
    return [] if x == y else [f"{path}: {x!r} vs {y!r}"[:200]]


# A resumed run's torch CPU generator is one draw ahead of the uninterrupted run's: the shard reader's
# DataLoader draws its base seed from it when its iterator is created, which a resume does after restoring
# the RNG states. Nothing in a step reads that generator (the losses are bitwise equal), so it is left out.
RESUME_RNG_DRAW = "/prealign/rng/torch"


def checkpoint_differences(a: Path, b: Path, ignore: tuple[str, ...] = (RESUME_RNG_DRAW,)) -> list[str]:
    """What differs between the DeepSpeed files of two tag folders, loaded (pickling order aside)."""
    import torch

    names = sorted(p.name for p in a.glob("*.pt"))
    if names != sorted(p.name for p in b.glob("*.pt")) or not names:
        return [f"files {names} vs {sorted(p.name for p in b.glob('*.pt'))}"]
    out = []
    for name in names:
        x, y = (torch.load(f / name, map_location="cpu", weights_only=False) for f in (a, b))
        out += [d for d in _differences(x, y, name) if not any(d.startswith(name + i + ":") for i in ignore)]
    return out


# --- figures for docs/reliability.md ----------------------------------------------------------------------------
def write_figures(figures: dict, default: Path) -> Path:
    """Write the measurements to $PREALIGN_RELIABILITY_JSON (or `default`); returns the path."""
    path = Path(os.environ.get("PREALIGN_RELIABILITY_JSON") or default)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(figures, indent=1, sort_keys=True) + "\n")
    return path
