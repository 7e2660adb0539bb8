"""Run a sweep on this machine, one run after another (or a few at a time), resuming a partial sweep.

For each run of `expand_sweep` (prealign_scale/launch/sweep.py): train it with the real launcher unless its run
folder is finished (the engine's DONE marker; a partial run folder resumes from its latest checkpoint), then
evaluate it unless ``<run>/eval/results.json`` exists. A killed sweep is resumed by running the same command.
The SLURM job-array path (launchers/submit_sweep.py) shares the expansion and the completion test.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from prealign_scale.engine.run_folder import run_is_finished
from prealign_scale.launch.sweep import RunSpec, expand_sweep, load_sweep

ROOT = Path(__file__).resolve().parents[2]  # the checkout: launchers/ are started from here


@dataclass
class LocalSweepOptions:
    nproc: int = 2  # ranks per run (the deepspeed launcher; 1 runs a plain process)
    parallel: int = 1  # runs at the same time
    eval_args: tuple[str, ...] = ()  # extra flags of launchers/evaluate.py
    base_port: int = 29600
    log_dir: str | None = None  # per-run logs (default <run>/sweep.log)


def run_dir_of(spec: RunSpec) -> Path:
    for o in reversed(spec.overrides):
        if o.startswith("run.out_dir="):
            return Path(o.split("=", 1)[1])
    raise ValueError(f"{spec.name}: no run.out_dir override")


def train_command(spec: RunSpec, nproc: int, port: int) -> list[str]:
    py = sys.executable
    script = [str(ROOT / "launchers/pretrain.py"), "--config", spec.config, *spec.overrides]
    if nproc == 1:
        return [py, *script]
    return [py, "-m", "deepspeed.launcher.runner", "--num_gpus", str(nproc), "--master_addr", "127.0.0.1",
            "--master_port", str(port), *script]


def eval_command(spec: RunSpec, opts: LocalSweepOptions) -> list[str]:
    return [sys.executable, str(ROOT / "launchers/evaluate.py"), str(run_dir_of(spec)), *opts.eval_args]


def launch_env() -> dict:
    """The environment of a training / evaluation process started on this machine (CPU: gloo on loopback)."""
    env = dict(os.environ)
    env.update({"MASTER_ADDR": "127.0.0.1", "TOKENIZERS_PARALLELISM": "false"})
    if not _has_cuda():  # DeepSpeed on CPU over gloo, loopback only (STACK.md)
        env.setdefault("DS_ACCELERATOR", "cpu")
        env.setdefault("OMP_NUM_THREADS", "1")
        env["GLOO_SOCKET_IFNAME"] = "lo"
    return env


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def _steps(spec: RunSpec, opts: LocalSweepOptions, port: int) -> list[tuple[str, list[str]]]:
    out = run_dir_of(spec)
    steps = []
    if not run_is_finished(out):
        steps.append(("train", train_command(spec, opts.nproc, port)))
    if not (out / "eval" / "results.json").is_file():
        steps.append(("eval", eval_command(spec, opts)))
    return steps


def run_local_sweep(sweep_path: str, opts: LocalSweepOptions, only: list[str] | None = None,
                    dry_run: bool = False) -> dict[str, str]:
    """Run (or resume) every run of the sweep; returns {run name: "done" | "skipped" | "failed: ..."}."""
    specs = expand_sweep(load_sweep(sweep_path))
    if only:
        unknown = sorted(set(only) - {s.name for s in specs})
        if unknown:
            raise ValueError(f"{sweep_path}: no run named {unknown}; runs: {[s.name for s in specs]}")
        specs = [s for s in specs if s.name in only]
    status: dict[str, str] = {}
    pending = [(i, s) for i, s in enumerate(specs)]
    running: dict[str, tuple[RunSpec, list, subprocess.Popen | None, object]] = {}
    while pending or running:
        while pending and len(running) < max(1, opts.parallel):
            i, spec = pending.pop(0)
            steps = _steps(spec, opts, opts.base_port + 10 * i)
            if not steps:
                status[spec.name] = "skipped (finished and evaluated)"
                print(f"[sweep] {spec.name}: finished and evaluated, skipped", flush=True)
                continue
            if dry_run:
                for what, cmd in steps:
                    print(f"[sweep] {spec.name} {what}: {' '.join(cmd)}")
                status[spec.name] = "dry-run"
                continue
            running[spec.name] = (spec, steps, None, None)
        for name in list(running):
            spec, steps, proc, log = running[name]
            if proc is not None and proc.poll() is None:
                continue
            if proc is not None:
                log.close()
                what = steps.pop(0)[0]
                if proc.returncode != 0:
                    status[name] = f"failed: {what} exited {proc.returncode} (log {log.name})"
                    print(f"[sweep] {name}: {status[name]}", flush=True)
                    del running[name]
                    continue
            if not steps:
                status[name] = "done"
                print(f"[sweep] {name}: done", flush=True)
                del running[name]
                continue
            what, cmd = steps[0]
            out = run_dir_of(spec)
            out.mkdir(parents=True, exist_ok=True)
            log_path = Path(opts.log_dir or out) / (f"{name}.{what}.log" if opts.log_dir else f"sweep.{what}.log")
            log_path.parent.mkdir(parents=True, exist_ok=True)
            log = open(log_path, "a")  # noqa: SIM115 -- open while the process runs, closed when it ends
            print(f"[sweep] {name}: {what} ({log_path})", flush=True)
            proc = subprocess.Popen(cmd, cwd=ROOT, env=launch_env(), stdout=log, stderr=subprocess.STDOUT)
            running[name] = (spec, steps, proc, log)
        time.sleep(0.5)
    return status
