"""``model.init_hf``: a run starts from an HF folder (2 in-process CPU ranks running launchers/pretrain.py, ZeRO-3).

Run A trains phase 1 for one step from random weights and exports ``A/hf``. Run B (``--phase all``) and run
C (``--phase lm``, continued pretraining) start from ``model.init_hf=A/hf``. The alignment probe runs at the
start and end of every phase (``run.probe_every=1``); it is a function of every weight (word vectors of every
layer, the unembedding rows), so a phase's step-0 probe equal bitwise to A's final probe means the phase
starts from exactly A's final weights. Without the import a run starts from the random initialisation of the
same seed, whose probe is A's step-0 one.
"""

from __future__ import annotations

from pathlib import Path

import check_init_hf_tp
import pytest
from distributed import run_distributed_test
from engine_common import launch, read_metrics, write_run_config

pytestmark = pytest.mark.slow


def probes(run_dir: Path) -> dict[tuple[str, int], dict]:
    """(phase, step) -> the probe record's values (without phase and step)."""
    return {(r["phase"], r["step"]): {k: v for k, v in r.items() if k not in ("phase", "step")}
            for r in read_metrics(run_dir) if r.get("kind") == "probe"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_data):
    root, data = tmp_path_factory.mktemp("init_hf"), tiny_data
    steps = {"align": {"steps": 1}, "lm": {"steps": 1}}
    a = write_run_config(root / "a.yaml", data, root / "a", run={"probe_every": 1, "tensorboard": False}, **steps)
    launch(a, "--phase", "align")
    logs = {}
    for name, phase in (("b", "all"), ("c", "lm")):
        cfg = write_run_config(root / f"{name}.yaml", data, root / name, model={"init_hf": str(root / "a/hf")},
                               run={"probe_every": 1, "tensorboard": False, "export_hf": False}, **steps)
        logs[name] = launch(cfg, "--phase", phase)
    return root, logs


def test_lm_phase_continues_from_the_hf_folder(runs):
    """Continued pretraining: `--phase lm` on a fresh folder starts from exactly the exported weights."""
    root, logs = runs
    a, c = probes(root / "a"), probes(root / "c")
    assert list(a) == [("align", 0), ("align", 1)] and list(c) == [("lm", 0), ("lm", 1)]
    assert a[("align", 0)] != a[("align", 1)]  # one step changes the probe: the comparison below can fail
    assert c[("lm", 0)] == a[("align", 1)]
    assert f"phase lm: starting from the weights of model.init_hf={root / 'a/hf'}" in logs["c"]
    assert [r["step"] for r in read_metrics(root / "c") if r.get("kind") != "probe"] == [1]


def test_align_phase_starts_from_the_hf_folder_and_lm_from_its_own_checkpoint(runs):
    """`--phase all`: phase 1 starts from the HF weights; phase 2 then continues from phase 1's checkpoint
    (a checkpoint of the run folder takes precedence over model.init_hf)."""
    root, logs = runs
    a, b = probes(root / "a"), probes(root / "b")
    assert list(b) == [("align", 0), ("align", 1), ("lm", 0), ("lm", 1)]
    assert b[("align", 0)] == a[("align", 1)]
    assert b[("lm", 0)] == b[("align", 1)] != a[("align", 1)]
    assert logs["b"].count("starting from the weights of model.init_hf") == 1
    assert "phase lm: starting from the weights of align-step00000001 with a fresh optimizer" in logs["b"]


def test_tensor_parallel_ranks_load_their_slices(tmp_path):
    """TP=2 (ZeRO-3 build, DP=1): each TP rank copies its slice of the HF weights; merged, they are exact."""
    res, _ = run_distributed_test(check_init_hf_tp.check, world_size=2, init_process_group=False,
                                  func_args=(str(tmp_path),))
    assert (res["tp"], res["dp"], res["loaded"]) == (2, 1, 2 * 6 + 3)  # 6 tensors per block + embedding, norm, head
    assert res["qkv_rows"] == 64  # one query group of the two: 2 q heads + k + v, 16 rows each
    assert res["all_equal"] is True, res["differ"]
