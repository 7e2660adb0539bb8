"""Elastic resume through the real `deepspeed` launcher (CPU, gloo, ZeRO-3, tiny preset, phase lm only):
a checkpoint written by 2 ranks continues on 1, and one written by 1 rank continues on 2.

Each case has a reference run that is never interrupted, on the old rank count. The elastic run is the same
command stopped after step 2 (``run.stop_after``), then continued on the other rank count with ``lm.grad_accum``
scaled so that the global batch (ranks x grad_accum x micro_batch_size = 8 samples) stays the same. The 4 steps
are one epoch of the tiny shards (32 samples).

Tolerance, and why: the weights and the Adam moments come back exactly (DeepSpeed's universal checkpoint
re-cuts the full fp32 tensors for the new ranks), and every step after the resume holds exactly the samples of
the reference's step (checked below), so the only difference is the order of fp32 sums (per-rank partial
gradients, then the data-parallel reduction). That moves the loss by rounding only: we allow 1e-5 absolute on a
loss of about 6.7 (about 20 float32 ulps; measured: 0 at step 3, 7e-7 at step 4, in both directions). A lost
or repeated micro-batch or another sample order fails the sample checks below directly; a reset optimizer
changes step 3's update from Adam's accumulated moments to a first step's.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "dist_scripts"))

from engine_common import BIN, ROOT, cpu_env, read_metrics, write_run_config
from reliability_cases import record_case
from tiny_data import build_tiny_data

pytestmark = pytest.mark.slow

LOSS_TOLERANCE = 1e-5  # absolute, on the step's LM loss (see the module docstring)
SAMPLES_PER_STEP = 8  # the global batch of every run here


def launch_on(ranks: int, config: Path, sample_log: Path, *overrides: str) -> str:
    """One run on `ranks` CPU ranks through the `deepspeed` launcher; each rank logs its step's sample keys."""
    from prealign_scale.dist import free_port

    cmd = [str(BIN / "deepspeed"), "--num_gpus", str(ranks), "--master_port", str(free_port()),
           "launchers/pretrain.py", "--config", str(config), *overrides]
    proc = subprocess.run(cmd, check=False, cwd=ROOT, env=cpu_env(PREALIGN_SAMPLE_LOG=sample_log),
                          capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-8000:]
    return out


def steps_samples(sample_log: Path, ranks: int) -> list[list[str]]:
    """The sample keys of each step of one launch, over all its ranks."""
    per_rank = [[json.loads(x) for x in Path(f"{sample_log}.rank{r}").read_text().splitlines()] for r in range(ranks)]
    assert len({len(x) for x in per_rank}) == 1, "the ranks fetched different numbers of steps"
    return [sorted(k for rank in per_rank for k in rank[s]) for s in range(len(per_rank[0]))]


def lm_config(path: Path, data: dict, out: Path, grad_accum: int) -> Path:
    return write_run_config(path, data, out, run={"phase": "lm", "ckpt_every": 2},
                            lm={"grad_accum": grad_accum})


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("elastic")
    return root, build_tiny_data(root / "data")


@pytest.mark.parametrize("old,new", [(2, 1), (1, 2)])
def test_elastic_resume_continues_the_epoch_and_the_loss(data, old, new):
    root, d = data
    case = root / f"{old}to{new}"
    case.mkdir()
    ga = {1: 4, 2: 2}  # grad_accum per rank count: the same 8-sample global batch
    ref_cfg = lm_config(case / "ref.yaml", d, case / "ref", ga[old])
    launch_on(old, ref_cfg, case / "ref-samples")
    el_old = lm_config(case / "el-old.yaml", d, case / "el", ga[old])
    el_new = lm_config(case / "el-new.yaml", d, case / "el", ga[new])
    first = launch_on(old, el_old, case / "el-samples-a", "run.stop_after=2")
    assert "run.stop_after reached: checkpoint" in first and "lm-step00000002" in first
    log = launch_on(new, el_new, case / "el-samples-b")
    assert (f"checkpoint lm-step00000002 was written by {old} data-parallel ranks, this run has {new}: "
            "converting it to a universal checkpoint") in log
    assert "(phase lm, step 2)" in log

    # the samples: every step holds exactly the reference's samples, and the epoch reads each sample once
    ref_steps = steps_samples(case / "ref-samples", old)
    el_steps = steps_samples(case / "el-samples-a", old) + steps_samples(case / "el-samples-b", new)
    assert [len(s) for s in el_steps] == [SAMPLES_PER_STEP] * 4
    assert el_steps == ref_steps
    counts = Counter(k for s in el_steps for k in s)
    assert len(counts) == 32 and set(counts.values()) == {1}  # the whole epoch (4 shards x 8), each once

    # the loss continues: steps 1-2 are the same run (bitwise), steps 3-4 within the stated tolerance
    ref, el = read_metrics(case / "ref"), read_metrics(case / "el")
    assert [r["step"] for r in el] == [1, 2, 3, 4] == [r["step"] for r in ref]
    assert el[:2] == ref[:2]
    print(f"{old}->{new} ranks: |loss - reference| at steps 3-4:", [abs(a["loss"] - b["loss"]) for a, b in
                                                                  zip(ref[2:], el[2:])])
    for a, b in zip(ref[2:], el[2:]):
        assert abs(a["loss"] - b["loss"]) <= LOSS_TOLERANCE, (a["step"], a["loss"], b["loss"])
        assert a["tokens"] == b["tokens"] and a["lr"] == b["lr"]
    # the new rank count's own checkpoint replaced the converted copy; the run finished and exported
    assert not (case / "el/checkpoints/universal").exists()
    assert (case / "el/checkpoints/latest").read_text() == "lm-step00000004"
    assert len(list((case / "el/checkpoints/lm-step00000004").glob("zero_pp_rank_*_model_states.pt"))) == new
    assert (case / "el/DONE").is_file() and (case / "el/hf/config.json").is_file()
    worst = max(abs(a["loss"] - b["loss"]) for a, b in zip(ref[2:], el[2:]))
    repeated_or_lost = 32 - sum(1 for n in counts.values() if n == 1)
    record_case("checkpoints", f"a checkpoint of {old} rank(s) resumed on {new} (elastic resume; before: impossible)",
                "converted to a universal checkpoint; each sample of the epoch read once; the loss within "
                f"{LOSS_TOLERANCE:g} of the uninterrupted run",
                f"converted; {len(counts)} distinct samples of 32, each once: {set(counts.values()) == {1}}; "
                f"max |loss - reference| {'<= ' + format(LOSS_TOLERANCE, 'g') if worst <= LOSS_TOLERANCE else worst}",
                loses_data=repeated_or_lost != 0)
