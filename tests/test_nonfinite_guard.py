"""The non-finite guard (issue 9 item 3): a NaN loss on one rank makes every rank's gradient norm NaN; DeepSpeed
drops that update, the guard logs the step as skipped, and past `run.max_bad_steps` the run stops with exit 1,
one line, the last good checkpoint as `latest`, no DONE and no export.

The NaN is injected by tests/dist_scripts/nan_pretrain.py (launchers/pretrain.py with LMPhase.micro_loss
wrapped); the two ranks are started the way srun starts tasks (as in test_engine_signals.py).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from engine_common import ROOT, cpu_env, write_run_config
from reliability_cases import record_case
from tiny_data import build_tiny_data

from prealign_scale.dist import free_port

pytestmark = pytest.mark.slow


def run_tasks(config: Path, nan_steps: str, *overrides: str) -> list[tuple[int, str]]:
    port, procs = free_port(), []
    for rank in range(2):
        env = cpu_env(SLURM_PROCID=rank, SLURM_LOCALID=rank, SLURM_NTASKS=2, SLURM_JOB_NUM_NODES=1,
                      MASTER_PORT=port, PREALIGN_TEST_NAN_STEPS=nan_steps, PREALIGN_TEST_NAN_RANK=1)
        env.pop("MASTER_ADDR")
        env.pop("SLURM_JOB_ID", None)
        cmd = [sys.executable, "tests/dist_scripts/nan_pretrain.py", "--config", str(config), *overrides]
        log = config.parent / f"task{rank}.log"  # a file, not a pipe: an unread pipe can fill and block a rank
        with open(log, "w") as f:
            procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, text=True))
    return [(p.wait(timeout=600), (config.parent / f"task{r}.log").read_text()) for r, p in enumerate(procs)]


def test_nan_loss_skips_then_stops_with_the_last_good_checkpoint(tmp_path):
    data = build_tiny_data(tmp_path / "data")
    run_dir = tmp_path / "run"
    config = write_run_config(tmp_path / "cfg.yaml", data, run_dir, run={"phase": "lm", "export_hf": True,
                                                                        "ckpt_every": 2, "keep_last": 4,
                                                                        "tensorboard": False, "max_bad_steps": 1},
                              lm={"steps": 8})
    results = run_tasks(config, "3,6")  # step 3: skipped (1 allowed); step 6: the second bad step stops the run
    out = results[0][1]
    assert [rc for rc, _ in results] == [1, 1], out[-6000:] + results[1][1][-3000:]
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2, 3, 4, 5]  # step 6 is not logged: it stopped the run
    assert recs[2]["bad_step"].startswith("loss nan") and recs[2]["bad_steps"] == 1
    assert "gradient norm" in recs[2]["bad_step"]  # DeepSpeed saw the NaN gradients of rank 1 on every rank
    # the update of step 3 was dropped: the weights stayed finite, the next losses are finite
    assert all(math.isfinite(r["loss"]) and "bad_step" not in r for r in recs[:2] + recs[3:])
    assert "[prealign] WARNING: phase lm step 3: loss nan" in out and "the update was skipped" in out
    lines = [x for x in out.splitlines() if "non-finite training at phase lm step 6" in x]
    assert len(lines) == 1 and "run.max_bad_steps=1" in lines[0], out[-6000:]
    assert lines[0].endswith(f"The last good checkpoint is lm-step{4:08d}")
    assert "Traceback" not in out
    assert (run_dir / "checkpoints/latest").read_text() == f"lm-step{4:08d}"
    assert not (run_dir / "DONE").exists() and not (run_dir / "hf").exists()
    assert not (run_dir / "LOCK").exists()  # released on a failed run too
    record_case("training", "NaN loss on rank 1 at steps 3 and 6, run.max_bad_steps=1 (before: lm.lr=.inf trained "
                "NaN to exit 0 with DONE and a NaN export)",
                "one bad step skipped and logged; the second stops the run: one line, exit non-zero, the last good "
                "checkpoint kept, no DONE, no export",
                f"exits {[rc for rc, _ in results]}; step 3 `bad_step` logged, its update dropped; "
                f"`{lines[0][lines[0].index('non-finite'):]}`; "
                f"latest lm-step{4:08d}; DONE: False, hf/: False",
                loses_data=False)  # step 3's update is dropped on purpose and logged: not silent
