"""launchers/export_fp32.py: consolidated fp32 weights of a ZeRO-3 checkpoint, verified against its manifest.

One tiny phase-2 run (2 CPU ranks, ZeRO-3, 2 steps, the run's own HF export at its end). An intact checkpoint
exports the engine's weights exactly; a damaged one (flipped byte, truncated file, no marker) is refused with
exit 2 and one line naming the file, and nothing is written.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent / "dist_scripts"))

from engine_common import ROOT, cpu_env, launch, write_run_config
from fault_common import flip_byte, truncate_half
from reliability_cases import exit_line, record_case
from tiny_data import build_tiny_data

pytestmark = pytest.mark.slow

TAG = "lm-step00000002"
OPTIM = "zero_pp_rank_1_mp_rank_00_optim_states.pt"


def export(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "launchers/export_fp32.py", *map(str, args)], cwd=ROOT, env=cpu_env(),
                          capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    data = build_tiny_data(root / "data")
    launch(write_run_config(root / "run.yaml", data, root / "run", run={"phase": "lm"}, lm={"steps": 2}))
    return root / "run"


def damaged_copy(run: Path, name: str) -> Path:
    copy = run.parent / f"damaged-{name}"
    shutil.copytree(run / "checkpoints", copy / "checkpoints")
    return copy


def test_intact_checkpoint_exports_the_engines_weights(run):
    proc = export(run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ours, engines = load_file(run / f"hf-{TAG}/model.safetensors"), load_file(run / "hf/model.safetensors")
    assert ours.keys() == engines.keys() and all(torch.equal(ours[k], engines[k]) for k in ours)
    assert (run / f"hf-{TAG}/config.json").is_file() and (run / f"hf-{TAG}/tokenizer.json").is_file()
    proc = export(run, "--tag", TAG, "--torch", "--out", run / "w.pt")
    assert proc.returncode == 0, proc.stderr[-3000:]
    sd = torch.load(run / "w.pt", weights_only=True)
    assert torch.equal(sd["embedding.word_embeddings.weight"], engines["model.embed_tokens.weight"])
    assert all(v.dtype == torch.float32 for v in sd.values())


@pytest.mark.parametrize("damage,named", [
    (lambda f: flip_byte(f / "zero_pp_rank_0_mp_rank_00_model_states.pt"),
     "zero_pp_rank_0_mp_rank_00_model_states.pt: sha256 differs from the manifest"),
    (lambda f: truncate_half(f / OPTIM), f"{OPTIM} has "),
    (lambda f: (f / "COMPLETE").unlink(), "no completeness marker COMPLETE"),
])
def test_damaged_checkpoint_is_refused_naming_the_file(run, damage, named):
    copy = damaged_copy(run, named.split()[0].strip(":"))
    damage(copy / "checkpoints" / TAG)
    proc = export(copy)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith(f"[export_fp32] error: {copy / 'checkpoints' / TAG}: damaged, not exported: ")
    assert named in lines[0]
    written = sorted(p.name for p in copy.iterdir())
    assert written == ["checkpoints"]  # nothing written
    damaged = {"sha256": "a flipped byte in a model-states file", "has": "an optimizer file cut to half its size",
               "marker": "the marker COMPLETE deleted"}
    what = next(text for word, text in damaged.items() if word in named.split())
    record_case("export", f"export_fp32.py of a checkpoint with {what}",
                "exit 2, one line naming the file, nothing written",
                f"{exit_line(proc.returncode, proc.stderr)}; written: {written[1:] or 'nothing'}")


def test_missing_checkpoint_is_refused(tmp_path):
    proc = export(tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert f"{tmp_path}/checkpoints/latest: no such file" in proc.stderr
    record_case("export", "export_fp32.py of a run folder without checkpoints", "exit 2, one line",
                exit_line(proc.returncode, proc.stderr))
