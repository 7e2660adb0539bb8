"""Shared helpers of the engine tests: the tiny run config, 2-rank runs (in-process, or the real `deepspeed`
launcher command), metrics comparison."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TIMING_KEYS = {"tokens_per_s", "mfu", "data_wait", "step_time"}


def cpu_env(**extra) -> dict:
    """The environment of STACK.md for 2 CPU ranks with gloo; the repository root on PYTHONPATH (the scripts
    in tests/dist_scripts import the package from the checkout)."""
    path = os.pathsep.join(x for x in (str(ROOT), os.environ.get("PYTHONPATH")) if x)
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1",
               GLOO_SOCKET_IFNAME="lo", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1", PYTHONPATH=path)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def write_run_config(path: Path, data: dict, out_dir: Path, **sections) -> Path:
    """The tiny test run: 4 align steps (8 entries/rank), 4 LM steps (2 x 2 sequences/rank), fp32 ZeRO-3."""
    body = {
        "model": {"preset": "tiny", "vocab_size": None, "seq_len": None, "tp": 1},
        "data": {"shard_dir": str(data["shards"]), "table_dir": str(data["table"]),
                 "tokenizer_dir": str(data["tokenizer"]), "num_workers": 0},
        "align": {"steps": 4, "entries_per_rank": 8, "grad_accum": 1, "lr": 5e-4, "warmup_frac": 0.25},
        "lm": {"steps": 4, "micro_batch_size": 2, "grad_accum": 2, "lr": 3e-4, "warmup_frac": 0.25},
        "run": {"out_dir": str(out_dir), "seed": 1234, "ds_config": str(ROOT / "ds_configs/cpu_zero3.json"),
                "log_every": 1, "ckpt_every": 0, "keep_last": 2, "export_hf": True, "progress": False},
        "dist": {"timeout_minutes": 5},
    }
    for sec, kv in sections.items():
        body[sec].update(kv)
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def deepspeed_cmd(port: int, config: Path, *overrides: str) -> list[str]:
    return [str(BIN / "deepspeed"), "--num_gpus", "2", "--master_port", str(port), "launchers/pretrain.py",
            "--config", str(config), *overrides]


def launch_deepspeed(config: Path, *overrides: str) -> str:
    """One 2-rank CPU run through the real `deepspeed` launcher; asserts exit 0, returns stdout + stderr."""
    from prealign_scale.dist import free_port

    proc = subprocess.run(deepspeed_cmd(free_port(), config, *overrides), check=False, cwd=ROOT, env=cpu_env(),
                          capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-8000:]
    return out


@contextmanager
def output_to(path: Path):
    """Send this process's stdout and stderr (file descriptors 1 and 2, so loggers and C++ too) to `path`."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "w") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


def pretrain_rank(argv: list[str], log_dir: str) -> int:
    """One rank of ``launchers/pretrain.py ARGV`` in this process (its `main`: config, process group, the
    engine's `run`); its output goes to LOG_DIR/rank{R}.log. Returns the launcher's exit status."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("pretrain_launcher", ROOT / "launchers/pretrain.py")
    launcher = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launcher)
    with output_to(Path(log_dir) / f"rank{os.environ['RANK']}.log"):
        return launcher.main(argv)


def launch(config: Path, *overrides: str) -> str:
    """One 2-rank CPU run of launchers/pretrain.py on in-process ranks (tests/distributed.py, the process
    group started by the engine as under a launcher); asserts exit 0 on both ranks, returns their output
    (rank 0's, then rank 1's)."""
    import tempfile

    from distributed import RankFailed, run_distributed_test

    with tempfile.TemporaryDirectory(prefix="ranks_") as logs:
        try:
            codes = run_distributed_test(pretrain_rank, world_size=2, init_process_group=False, timeout=300,
                                         func_args=(["--config", str(config), *overrides], logs))
        except RankFailed as exc:
            codes = exc
        out = "".join(p.read_text() for p in sorted(Path(logs).glob("rank*.log")))
    assert codes == [0, 0], f"{codes}\n{out[-8000:]}"
    return out


def read_metrics(run_dir: Path, drop_timing: bool = True) -> list[dict]:
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    recs = [json.loads(x) for x in lines]
    if drop_timing:
        recs = [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in recs]
    return recs
