"""The local sweep runner: every run trained then evaluated once; a re-run resumes a partial sweep."""

import json
import sys
from pathlib import Path

import pytest

import prealign_scale.launch.sweep_local as sl
from prealign_scale.engine.run_folder import mark_finished

FAKE = """
import json, sys
from pathlib import Path
what, out, log = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
with open(log, "a") as f:
    f.write(json.dumps([what, out.name]) + "\\n")
if (out.parent / "FAIL").read_text().strip() == out.name:
    sys.exit(3)
if what == "train":
    from prealign_scale.engine.run_folder import mark_finished
    out.mkdir(parents=True, exist_ok=True)
    mark_finished(out)
else:
    (out / "eval").mkdir(parents=True, exist_ok=True)
    (out / "eval" / "results.json").write_text("{}")
"""


@pytest.fixture
def sweep(tmp_path, monkeypatch):
    root = tmp_path / "runs"
    root.mkdir()
    (root / "FAIL").write_text("b_s2")
    fake = tmp_path / "fake.py"
    fake.write_text(FAKE)
    calls = tmp_path / "calls.jsonl"
    cfg = tmp_path / "base.yaml"
    cfg.write_text("run: {}\n")
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"config: {cfg}\nout_root: {root}\naxes:\n  arm: {{a: [], b: []}}\n"
                     "  seed: {s1: run.seed=1, s2: run.seed=2}\n")
    monkeypatch.setattr(sl, "train_command", lambda spec, nproc, port: [
        sys.executable, str(fake), "train", str(sl.run_dir_of(spec)), str(calls)])
    monkeypatch.setattr(sl, "eval_command", lambda spec, opts: [
        sys.executable, str(fake), "eval", str(sl.run_dir_of(spec)), str(calls)])
    return sweep, root, calls


def read_calls(path: Path) -> list:
    return [tuple(json.loads(x)) for x in path.read_text().splitlines()] if path.exists() else []


def test_runs_each_once_and_resumes(sweep):
    path, root, calls = sweep
    # a run finished (but not evaluated) before the sweep started: only its evaluation runs
    mark_finished(root / "a_s2")
    status = sl.run_local_sweep(str(path), sl.LocalSweepOptions(parallel=2))
    assert status["b_s2"].startswith("failed: train exited 3")
    assert {k: v for k, v in status.items() if k != "b_s2"} == {"a_s1": "done", "a_s2": "done", "b_s1": "done"}
    first = read_calls(calls)
    assert sorted(first) == sorted([("train", "a_s1"), ("eval", "a_s1"), ("eval", "a_s2"), ("train", "b_s1"),
                                    ("eval", "b_s1"), ("train", "b_s2")])
    # fix the failure and run the same sweep again: only the unfinished run is done
    (root / "FAIL").write_text("none")
    status = sl.run_local_sweep(str(path), sl.LocalSweepOptions())
    assert status["b_s2"] == "done" and all(v.startswith("skipped") for k, v in status.items() if k != "b_s2")
    assert read_calls(calls)[len(first):] == [("train", "b_s2"), ("eval", "b_s2")]


def test_only_and_unknown_names(sweep):
    path, _, calls = sweep
    assert sl.run_local_sweep(str(path), sl.LocalSweepOptions(), only=["a_s1"]) == {"a_s1": "done"}
    assert read_calls(calls) == [("train", "a_s1"), ("eval", "a_s1")]
    with pytest.raises(ValueError, match="no run named"):
        sl.run_local_sweep(str(path), sl.LocalSweepOptions(), only=["zzz"])
