"""Pure pieces of the engine: LR schedule, rank discovery, checkpoint bookkeeping, resume plan, pooling,
metrics truncation, pre-emption flag, ds_config assembly. No process group (except the mpirun test)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from prealign_scale import dist as pdist
from prealign_scale.alignment.word_vectors import pool_words
from prealign_scale.config import Config
from prealign_scale.engine.callbacks import MetricsFile, Preemption
from prealign_scale.engine.checkpoint import CheckpointInfo, CheckpointManager, make_tag
from prealign_scale.engine.deepspeed_setup import phase_ds_config, reset_optimizer
from prealign_scale.engine.run import plan_phase
from prealign_scale.engine.schedule import lr_at

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ schedule
def test_lr_schedule_values():
    kw = {"total_steps": 10, "lr": 1.0, "warmup_frac": 0.2}
    assert [lr_at(s, schedule="linear", **kw) for s in range(10)] == pytest.approx(
        [0.5, 1.0, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125])
    cos = [lr_at(s, schedule="cosine", min_lr_ratio=0.1, **kw) for s in range(10)]
    assert cos[:3] == pytest.approx([0.5, 1.0, 1.0])
    assert cos[6] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(9, schedule="constant", **kw) == 1.0
    assert lr_at(0, total_steps=4, lr=3e-4, warmup_frac=0.05, schedule="cosine") == 3e-4  # no warmup step
    with pytest.raises(ValueError, match="outside"):
        lr_at(10, schedule="linear", **kw)


# ------------------------------------------------------------------------------------- rank discovery
def test_discover_torchrun_and_deepspeed_env():
    env = {"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "10.0.0.5",
           "MASTER_PORT": "6000"}
    info = pdist.discover(env, export=False)
    assert info == pdist.DistEnv(3, 1, 4, 2, "10.0.0.5", 6000, "env") and not info.all_local
    ds = {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "LOCAL_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
          "MASTER_PORT": "29500"}
    assert pdist.discover(ds, export=False).all_local


def test_discover_open_mpi_env_with_given_master():
    env = {"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_LOCAL_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2",
           "OMPI_COMM_WORLD_LOCAL_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29511"}
    assert pdist.discover(env, export=False) == pdist.DistEnv(1, 1, 2, 2, "127.0.0.1", 29511, "mpi")


def test_discover_slurm_single_and_multi_node():
    one = {"SLURM_PROCID": "1", "SLURM_LOCALID": "1", "SLURM_NTASKS": "2", "SLURM_JOB_NUM_NODES": "1",
           "SLURM_JOB_ID": "77"}
    assert pdist.discover(one, export=False) == pdist.DistEnv(1, 1, 2, 2, "127.0.0.1", 20077, "slurm")
    multi = {"SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_NTASKS": "8", "SLURM_JOB_NUM_NODES": "2",
             "SLURM_TASKS_PER_NODE": "4(x2)", "SLURM_JOB_NODELIST": "gpu[03-04]", "MASTER_PORT": "7000"}
    info = pdist.discover(multi, export=False)
    assert (info.rank, info.local_world_size, info.master_port) == (5, 4, 7000)
    assert info.master_addr == pdist.first_slurm_host("gpu[03-04]")


def test_first_slurm_host_parse(monkeypatch):
    monkeypatch.setattr(pdist.shutil, "which", lambda name: None)  # the plain parse, without scontrol
    assert pdist.first_slurm_host("gpu[03-05,07],cpu1") == "gpu03"
    assert pdist.first_slurm_host("node7,node8") == "node7"
    assert pdist.first_slurm_host("solo") == "solo"


def test_discover_single_process_and_bad_rank():
    info = pdist.discover({}, export=False)
    assert (info.rank, info.world_size, info.master_addr, info.launcher) == (0, 1, "127.0.0.1", "single")
    with pytest.raises(RuntimeError, match="rank 2 is outside the world size 2"):
        pdist.discover({"RANK": "2", "WORLD_SIZE": "2"}, export=False)
    with pytest.raises(RuntimeError, match="OMPI_COMM_WORLD_RANK='x' is not an integer"):
        pdist.discover({"OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "x"}, export=False)


def test_cuda_device_index_follows_the_visible_devices():
    assert [pdist.cuda_device_index(r, 8) for r in range(8)] == list(range(8))
    assert [pdist.cuda_device_index(r, 1) for r in range(4)] == [0, 0, 0, 0]  # srun --gpus-per-task=1
    assert [pdist.cuda_device_index(r, 2) for r in range(4)] == [0, 1, 0, 1]
    with pytest.raises(RuntimeError, match="local rank 3 wants CUDA but no device is visible"):
        pdist.cuda_device_index(3, 0)


@pytest.mark.slow
def test_mpirun_discovery_and_process_group(tmp_path):
    """Two ranks under Open MPI: ranks from OMPI_*, loopback master, a port chosen by rank 0 and broadcast."""
    if subprocess.run(["which", "mpirun"], check=False, capture_output=True).returncode != 0:
        pytest.skip("mpirun is not installed")
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(x for x in (str(ROOT), os.environ.get("PYTHONPATH")) if x))
    env.pop("MASTER_ADDR", None), env.pop("MASTER_PORT", None)
    cmd = ["mpirun", "--allow-run-as-root", "-np", "2", "--mca", "btl", "self,vader", "--mca", "oob_tcp_if_include",
           "lo", sys.executable, "tests/dist_scripts/check_discovery.py", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, check=False, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [(r["rank"], r["local_rank"], r["world"], r["launcher"], r["addr"], r["sum"]) for r in rows] == \
        [(0, 0, 2, "mpi", "127.0.0.1", 1.0), (1, 1, 2, "mpi", "127.0.0.1", 1.0)]
    assert rows[0]["port"] == rows[1]["port"] and rows[0]["backend"] == "gloo"


# ------------------------------------------------------------------------------- checkpoint bookkeeping
def fake_checkpoint(root: Path, phase: str, step: int, phase_steps: int) -> None:
    tag = make_tag(phase, step)
    (root / tag).mkdir(parents=True)
    (root / tag / "state.json").write_text(json.dumps({"tag": tag, "phase": phase, "step": step,
                                                       "phase_steps": phase_steps}))


def test_checkpoint_latest_and_prune(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_last=2)
    assert mgr.latest() is None
    for phase, step in (("align", 2), ("align", 4), ("lm", 2), ("lm", 10)):
        fake_checkpoint(mgr.root, phase, step, 4 if phase == "align" else 10)
    assert [i.tag for i in mgr.tags()] == ["align-step00000002", "align-step00000004", "lm-step00000002",
                                           "lm-step00000010"]
    (mgr.root / "latest").write_text("lm-step00000002")
    assert mgr.latest() == CheckpointInfo("lm-step00000002", "lm", 2, 10)
    mgr._prune(keep="lm-step00000002")
    assert [i.tag for i in mgr.tags()] == ["lm-step00000002", "lm-step00000010"]
    (mgr.root / "latest").write_text("align-step00000009")
    with pytest.raises(RuntimeError, match="names 'align-step00000009', but .* is missing"):
        mgr.latest()


def test_resume_plan():
    cfg = Config()
    cfg.align.steps, cfg.lm.steps, cfg.run.out_dir = 4, 6, "runs/x"
    assert plan_phase("align", None, cfg) == ("fresh", None)
    mid_align = CheckpointInfo("align-step00000002", "align", 2, 4)
    end_align = CheckpointInfo("align-step00000004", "align", 4, 4)
    mid_lm = CheckpointInfo("lm-step00000003", "lm", 3, 6)
    assert plan_phase("align", mid_align, cfg) == ("resume", mid_align)
    assert plan_phase("align", end_align, cfg) == ("skip", None)
    assert plan_phase("lm", end_align, cfg) == ("from_weights", end_align)
    assert plan_phase("align", mid_lm, cfg) == ("skip", None)
    assert plan_phase("lm", mid_lm, cfg) == ("resume", mid_lm)
    with pytest.raises(RuntimeError, match="finish that phase first"):
        plan_phase("lm", mid_align, cfg)


def test_metrics_truncated_to_the_checkpoint(tmp_path):
    m = MetricsFile(tmp_path / "metrics.jsonl")
    for phase, step in (("align", 1), ("align", 2), ("lm", 1), ("lm", 2), ("lm", 3)):
        m.write({"phase": phase, "step": step})
    m.truncate_after("lm", 1)
    assert [json.loads(x) for x in m.path.read_text().splitlines()] == [
        {"phase": "align", "step": 1}, {"phase": "align", "step": 2}, {"phase": "lm", "step": 1}]


def test_preemption_flag_on_sigusr1():
    p = Preemption()
    p.install()
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        assert p.received == "SIGUSR1"
    finally:
        p.uninstall()
    assert signal.getsignal(signal.SIGUSR1) is not p._handle


# ------------------------------------------------------------------------------------ word vectors
def test_pool_words_means_over_real_tokens():
    states = torch.arange(2 * 3 * 1, dtype=torch.float32).reshape(3, 2, 1)  # [s=3, b=2, h=1] (megatron)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    # word 0: tokens 0, 2 -> (0 + 2) / 2; word 1: tokens 1, 3, 5 -> 3
    assert pool_words(states.transpose(0, 1), mask).tolist() == [[1.0], [3.0]]


# ------------------------------------------------------------------------------------- ds_config
def test_phase_ds_config_fills_batches_and_refuses_a_scheduler(tmp_path):
    cfg = Config()
    cfg.run.ds_config = str(ROOT / "ds_configs/cpu_zero3.json")
    cfg.lm.micro_batch_size, cfg.lm.grad_accum, cfg.lm.lr, cfg.lm.weight_decay = 4, 3, 2e-4, 0.05
    ds = phase_ds_config(cfg, "lm", dp_world_size=2)
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["train_batch_size"]) == \
        (4, 3, 24)
    assert ds["optimizer"]["params"]["lr"] == 2e-4 and ds["optimizer"]["params"]["weight_decay"] == 0.05
    assert ds["optimizer"]["params"]["torch_adam"] is True and ds["zero_optimization"]["stage"] == 3
    bad = tmp_path / "ds.json"
    bad.write_text(json.dumps({"zero_optimization": {"stage": 3}, "scheduler": {"type": "WarmupLR"}}))
    cfg.run.ds_config = str(bad)
    with pytest.raises(ValueError, match="remove the 'scheduler' section"):
        phase_ds_config(cfg, "align", dp_world_size=1)


def test_shipped_ds_configs_are_zero3():
    for path in sorted((ROOT / "ds_configs").glob("*.json")):
        ds = json.loads(path.read_text())
        assert ds["zero_optimization"]["stage"] == 3, path
        assert not {"train_batch_size", "scheduler"} & ds.keys(), path


def test_reset_optimizer_clears_state_and_sets_decay():
    class Engine:  # the two attributes reset_optimizer touches
        pass

    p = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.AdamW([{"params": [p], "weight_decay": 0.5, "name": "decay"}])
    p.grad = torch.ones(2)
    opt.step()
    eng = Engine()
    eng.optimizer = opt
    reset_optimizer(eng, weight_decay=0.01)
    assert len(opt.state) == 0 and opt.param_groups[0]["weight_decay"] == 0.01
    assert eng.global_steps == 0
