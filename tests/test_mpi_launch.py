"""The training launcher under Open MPI: ``mpirun -np 2 python launchers/pretrain.py`` on loopback (STACK.md).

Ranks come from OMPI_COMM_WORLD_* (prealign_scale/dist.py), the master is 127.0.0.1 and rank 0 picks the
port. The run must equal the same run started by torchrun, loss for loss (both are 2 ranks of ZeRO-3 on CPU,
and the launcher must not change the training). The shard builder's ``mpirun -np 2`` test lives in
tests/test_build_shards.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from prealign_scale.dist import free_port

ROOT = Path(__file__).resolve().parents[1]
TIMING = {"tokens_per_s", "mfu", "data_wait", "step_time"}
pytestmark = pytest.mark.slow


def cpu_env() -> dict:
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               PYTHONUNBUFFERED="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "GLOO_SOCKET_IFNAME"):
        env.pop(k, None)
    return env


def overrides(data: dict, out_dir: Path) -> list[str]:
    return ["--config", "configs/tiny.yaml", f"data.shard_dir={data['shards']}",
            f"data.table_dir={data['table']}",
            f"data.tokenizer_dir={data['tokenizer']}", "align.steps=2", "align.entries_per_rank=8", "lm.steps=3",
            "lm.micro_batch_size=2", "run.progress=false", "dist.timeout_minutes=5", f"run.out_dir={out_dir}"]


def metrics(run_dir: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def run(cmd: list[str], env: dict) -> str:
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400, check=False)
    assert proc.returncode == 0, \
        f"{' '.join(cmd)} -> {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc.stdout + proc.stderr


def test_mpirun_two_ranks_trains_like_torchrun(tmp_path, tiny_data):
    if shutil.which("mpirun") is None:
        pytest.skip("mpirun is not installed (apt-get install -y openmpi-bin libopenmpi-dev; scripts/install.sh)")
    mpi_dir, ref_dir = tmp_path / "mpirun", tmp_path / "torchrun"
    out = run(["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", "2", "--mca", "btl", "self,vader",
               "--mca", "oob_tcp_if_include", "lo", sys.executable, "launchers/pretrain.py",
               *overrides(tiny_data, mpi_dir)], cpu_env())
    assert f"run finished: {mpi_dir}" in out
    run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(free_port()), "launchers/pretrain.py", *overrides(tiny_data, ref_dir)],
        dict(cpu_env(), GLOO_SOCKET_IFNAME="lo"))

    got, want = metrics(mpi_dir), metrics(ref_dir)
    assert [(m["phase"], m["step"]) for m in got] == [("align", 1), ("align", 2), ("lm", 1), ("lm", 2), ("lm", 3)]
    assert got == want  # bitwise: same losses, learning rates and token counts
    for d in (mpi_dir, ref_dir):
        assert (d / "DONE").is_file() and (d / "hf/config.json").is_file()
        assert (d / "checkpoints/latest").read_text() == "lm-step00000003"
