"""Resume == uninterrupted, bitwise on CPU (2 ranks running launchers/pretrain.py, ZeRO-3, gloo).

Run A trains align 4 steps + lm 4 steps in one go, through the real `deepspeed` launcher (the suite's
end-to-end run of ``deepspeed launchers/pretrain.py`` over both phases and the export). Run B, on 2 in-process
ranks (tests/distributed.py), is the same run stopped twice by ``run.stop_after`` (checkpoint + exit 0):
after align step 2 (mid phase 1), then after lm step 2 (mid phase 2, in the middle of a shard: 8 of the 13
samples of each rank's first shard read), then resumed to the end.
Every logged value (losses per layer and language, lr, token counts) must be identical, as must the exported
weights; the export must reproduce the training model's logits in transformers.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from engine_common import ROOT, cpu_env, launch, launch_deepspeed, read_metrics, write_run_config
from safetensors.torch import load_file

pytestmark = pytest.mark.slow


LEAKED_SHM: set[Path] = set()  # /dev/shm files the runs fixture's launches left behind


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_data):
    root, data = tmp_path_factory.mktemp("resume"), tiny_data
    # the alignment probe runs too (every 2 steps): it must not disturb a bitwise resume
    a = write_run_config(root / "a.yaml", data, root / "a", run={"probe_every": 2})
    b = write_run_config(root / "b.yaml", data, root / "b", run={"ckpt_every": 3, "keep_last": 2, "probe_every": 2})
    shm_before = set(Path("/dev/shm").glob("deepspeed_allreduce_buffer_*"))
    launch_deepspeed(a)
    logs = [launch(b, "run.stop_after=2"), launch(b, "run.stop_after=4"), launch(b)]
    LEAKED_SHM.update(set(Path("/dev/shm").glob("deepspeed_allreduce_buffer_*")) - shm_before)
    return root / "a", root / "b", logs


def test_cpu_runs_leave_no_shared_memory_behind(runs):
    """DeepSpeed's CPU shm all-reduce op is kept off (prealign_scale.dist.disable_deepspeed_shm_allreduce):
    four 2-rank runs leave no 64 MiB /dev/shm buffer behind."""
    assert runs and LEAKED_SHM == set(), sorted(LEAKED_SHM)


def test_resumed_run_equals_uninterrupted(runs):
    a, b, logs = runs
    ma, mb = read_metrics(a), read_metrics(b)
    steps = [(r["phase"], r["step"]) for r in ma if r.get("kind") != "probe"]
    assert steps == [("align", i) for i in range(1, 5)] + [("lm", i) for i in range(1, 5)]
    probes = [(r["phase"], r["step"]) for r in ma if r.get("kind") == "probe"]
    assert probes == [("align", 0), ("align", 2), ("align", 4), ("lm", 0), ("lm", 2), ("lm", 4)]
    assert mb == ma  # bitwise: every loss, per-layer loss, per-language loss, lr, token count and probe value
    assert "run.stop_after reached: checkpoint" in logs[0] and "align-step00000002" in logs[0]
    assert "resuming from" in logs[1] and "(phase align, step 2)" in logs[1]
    assert "starting from the weights of align-step00000004 with a fresh optimizer" in logs[1]
    assert "(phase lm, step 2)" in logs[2]
    wa, wb = load_file(a / "hf/model.safetensors"), load_file(b / "hf/model.safetensors")
    assert wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa)


def test_resumed_run_ends_with_the_same_rng_states(runs):
    """The RNG states saved in the last checkpoint (python, numpy, torch) match the uninterrupted run's on
    every rank: a resume draws nothing extra from the global generators."""
    import numpy as np
    import torch

    a, b, _ = runs
    for rank in (0, 1):
        name = f"checkpoints/lm-step00000004/zero_pp_rank_{rank}_mp_rank_00_model_states.pt"
        ra, rb = (torch.load(d / name, map_location="cpu", weights_only=False)["prealign"]["rng"] for d in (a, b))
        assert torch.equal(ra["torch"], rb["torch"]), f"rank {rank}: torch CPU generator differs"
        assert ra["python"] == rb["python"], f"rank {rank}: python random differs"
        assert all(np.array_equal(x, y) for x, y in zip(ra["numpy"], rb["numpy"])), f"rank {rank}: numpy differs"


def test_checkpoint_folder_layout(runs):
    _, b, _ = runs
    root = b / "checkpoints"
    assert (root / "latest").read_text() == "lm-step00000004"
    # keep_last=2 over align-2, align-3 (ckpt_every), align-4, lm-2, lm-3, lm-4
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["lm-step00000003", "lm-step00000004"]
    state = json.loads((root / "lm-step00000004/state.json").read_text())
    assert state == {"tag": "lm-step00000004", "phase": "lm", "step": 4, "phase_steps": 4}
    assert (root / "lm-step00000004/config.yaml").is_file() and (b / "config.yaml").is_file()
    assert (b / "DONE").is_file() and (b / "hf/config.json").is_file()
    assert len(list((root / "lm-step00000004").glob("zero_pp_rank_*_mp_rank_00_model_states.pt"))) == 2


def test_export_reproduces_training_logits(runs):
    a, _, _ = runs
    proc = subprocess.run([sys.executable, "tests/dist_scripts/check_export.py", str(a)], check=False, cwd=ROOT,
                          env=cpu_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["hf_vocab"] == 800 and res["logit_scale"] > 0.1
    assert res["max_abs_diff"] < 1e-4
    assert (a / "hf/tokenizer.json").is_file()
