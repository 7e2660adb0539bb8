"""Sweep expansion, task resolution and the completion marker (prealign_scale/launch/sweep.py,
prealign_scale/engine/run_folder.py, launchers/sweep_task.py, launchers/submit_sweep.py --dry-run). Pure and fast: no SLURM needed (tests/test_slurm.py runs them for
real)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from prealign_scale.engine import run_folder
from prealign_scale.launch import sweep as sw

ROOT = Path(__file__).resolve().parents[1]

SWEEP = """\
config: configs/tiny.yaml
out_root: {out}
overrides: [lm.steps=3]
axes:
  size:
    tiny: [model.preset=tiny]
    small: model.preset=small
  arm:
    joint: [align.steps=0, lm.lr=1.0e-3]
    prealign: []
  seed:
    s1: run.seed=1
    s2: run.seed=2
exclude:
  - {{size: small, seed: s2}}
sbatch: [--time=00:10:00]
"""


def write_sweep(tmp_path: Path, text: str = SWEEP) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(text.format(out=tmp_path / "runs"))
    return path


def test_expansion_order_names_and_overrides(tmp_path):
    runs = sw.expand_sweep(sw.load_sweep(write_sweep(tmp_path)))
    out = tmp_path / "runs"
    assert [r.name for r in runs] == ["tiny_joint_s1", "tiny_joint_s2", "tiny_prealign_s1", "tiny_prealign_s2",
                                      "small_joint_s1", "small_prealign_s1"]
    assert runs[1].overrides == ("lm.steps=3", "model.preset=tiny", "align.steps=0", "lm.lr=1.0e-3", "run.seed=2",
                                 f"run.out_dir={out}/tiny_joint_s2")
    assert runs[5].overrides == ("lm.steps=3", "model.preset=small", "run.seed=1",
                                 f"run.out_dir={out}/small_prealign_s1")
    assert runs[5].labels == (("size", "small"), ("arm", "prealign"), ("seed", "s1"))
    assert runs[5].out_dir == f"{out}/small_prealign_s1"
    assert runs[0].launcher_args() == ["--config", "configs/tiny.yaml", *runs[0].overrides]
    sw.check_runs(runs)  # every run's config + overrides parse


def test_sweep_fields_and_no_axes(tmp_path):
    sweep = sw.load_sweep(write_sweep(tmp_path))
    assert sweep.sbatch == ("--time=00:10:00",) and sweep.exclude == ((("size", "small"), ("seed", "s2")),)
    single = sw.parse_sweep({"config": "configs/tiny.yaml", "out_root": "runs/x"})
    assert [(r.name, r.overrides) for r in sw.expand_sweep(single)] == [("run", ("run.out_dir=runs/x/run",))]


@pytest.mark.parametrize("text, message", [
    ("config: c.yaml\nout_root: r\naxes:\n  seed:\n    s1: [run.out_dir=x]\n",
     "sweep.yaml:5: axes.seed.s1: 'run.out_dir=x': run.out_dir is set per run by the sweep"),
    ("config: c.yaml\nout_root: r\naxes:\n  seed:\n    s_1: run.seed=1\n",
     "sweep.yaml:5: axes.seed.s_1: a label may use letters, digits and . + - only"),
    ("config: c.yaml\nout_root: r\naxes:\n  seed:\n    s1: [lm.steps]\n",
     "sweep.yaml:5: axes.seed.s1: 'lm.steps' is not a section.key=value override"),
    ("config: c.yaml\nout_root: r\naxis: {}\n", "sweep.yaml:3: axis: unknown key"),
    ("out_root: r\n", "sweep.yaml: config: required, a path (got None)"),
    ("config: c.yaml\nout_root: r\naxes:\n  seed: {s1: run.seed=1}\nexclude:\n  - {arm: joint}\n",
     "sweep.yaml:6: exclude[0]: unknown axis 'arm' (axes: seed)"),
    ("config: c.yaml\nout_root: r\naxes:\n  seed: {s1: run.seed=1}\nexclude:\n  - {seed: s1}\n",
     "sweep.yaml: the exclude rules leave no run"),
    ("config: c.yaml\nout_root: r\nsbatch: [time=1]\n",
     "sweep.yaml:3: sbatch: expected a list of sbatch options"),
    ("config: [c\n", "sweep.yaml: not valid YAML"),
])
def test_bad_sweep_files_name_file_line_and_key(tmp_path, text, message):
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    with pytest.raises(sw.SweepError) as exc:
        sw.expand_sweep(sw.load_sweep(path))
    assert str(exc.value).startswith(str(tmp_path / message)), str(exc.value)


def test_bad_override_value_is_caught_at_check_time(tmp_path):
    path = write_sweep(tmp_path, SWEEP.replace("run.seed=2", "run.seed=two"))
    runs = sw.expand_sweep(sw.load_sweep(path))
    match = r"run tiny_joint_s2: command line 'run.seed=two': run.seed: expected int"
    with pytest.raises(sw.SweepError, match=match):
        sw.check_runs(runs, str(path))


def test_finished_marker_and_task_ids(tmp_path):
    assert not run_folder.run_is_finished(tmp_path / "r")
    marker = run_folder.mark_finished(tmp_path / "r", {"step": 3})
    assert marker == tmp_path / "r" / "DONE" and json.loads(marker.read_text()) == {"step": 3}
    assert run_folder.run_is_finished(tmp_path / "r")
    assert sw.task_id_from_env({"SLURM_ARRAY_TASK_ID": "4"}) == 4
    with pytest.raises(sw.SweepError, match="SLURM_ARRAY_TASK_ID is not set"):
        sw.task_id_from_env({})
    with pytest.raises(sw.SweepError, match="'x' is not an integer"):
        sw.task_id_from_env({"SLURM_ARRAY_TASK_ID": "x"})
    runs = sw.expand_sweep(sw.load_sweep(write_sweep(tmp_path)))
    with pytest.raises(sw.SweepError, match=r"task id 6 is out of range: the sweep has 6 runs \(ids 0..5\)"):
        sw.task_run(runs, 6)


def test_frozen_task_list_round_trip(tmp_path):
    runs = sw.expand_sweep(sw.load_sweep(write_sweep(tmp_path)))
    path = sw.save_tasks(runs, tmp_path / "runs", source="sweep.yaml")
    assert path.parent == tmp_path / "runs" and path.name.startswith("sweep-") and path.suffix == ".json"
    assert sw.load_runs(path) == runs
    assert sw.save_tasks(runs, tmp_path / "runs", source="sweep.yaml") == path  # same content, same file
    assert sw.save_tasks(runs[:2], tmp_path / "runs", source="sweep.yaml") != path


def run_tool(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env=env, check=False)


def test_sweep_task_shell_output_evaluates_in_bash(tmp_path):
    path = write_sweep(tmp_path)
    run_folder.mark_finished(tmp_path / "runs" / "tiny_joint_s2")
    proc = run_tool("launchers/sweep_task.py", "--sweep", str(path), "--task-id", "1", "--shell")
    assert proc.returncode == 0, proc.stderr
    show = 'printf "%s\\n" "$RUN_NAME" "$RUN_FINISHED" "${RUN_ARGS[@]}"'
    shown = subprocess.run(["bash", "-c", proc.stdout + show],
                           capture_output=True, text=True, check=True).stdout.splitlines()
    assert shown == ["tiny_joint_s2", "1", "--config", "configs/tiny.yaml", "lm.steps=3", "model.preset=tiny",
                     "align.steps=0", "lm.lr=1.0e-3", "run.seed=2", f"run.out_dir={tmp_path}/runs/tiny_joint_s2"]
    listing = run_tool("launchers/sweep_task.py", "--sweep", str(path), "--list").stdout.splitlines()
    assert listing[:2] == ["0\ttodo\ttiny_joint_s1", "1\tfinished\ttiny_joint_s2"] and len(listing) == 6


def test_sweep_task_single_run_and_errors(tmp_path):
    proc = run_tool("launchers/sweep_task.py", "--shell", "--config", "configs/tiny.yaml", "lm.steps=2",
                    f"run.out_dir={tmp_path}/one", "--phase", "lm")
    assert proc.returncode == 0, proc.stderr
    assert f"RUN_DIR={tmp_path}/one\n" in proc.stdout and "RUN_FINISHED=0\n" in proc.stdout
    args = f"--config configs/tiny.yaml lm.steps=2 run.out_dir={tmp_path}/one run.phase=lm"
    assert f"RUN_ARGS=({args})" in proc.stdout
    bad = run_tool("launchers/sweep_task.py", "--shell", "--config", "configs/tiny.yaml", "lm.stepz=2")
    assert bad.returncode == 2 and "lm.stepz: unknown key; did you mean lm.steps?" in bad.stderr
    env = {"PATH": "/usr/bin:/bin", "SLURM_ARRAY_TASK_ID": "9"}
    out_of_range = run_tool("launchers/sweep_task.py", "--sweep", str(write_sweep(tmp_path)), "--shell", env=env)
    assert out_of_range.returncode == 2 and "task id 9 is out of range" in out_of_range.stderr


def test_submit_dry_run_leaves_finished_runs_out(tmp_path):
    path = write_sweep(tmp_path)
    for name in ("tiny_joint_s1", "tiny_joint_s2", "small_joint_s1"):
        run_folder.mark_finished(tmp_path / "runs" / name)
    proc = run_tool("launchers/submit_sweep.py", str(path), "--dry-run", "--max-parallel", "2", "--",
                    "--partition=gpu")
    assert proc.returncode == 0, proc.stderr
    tasks = next((tmp_path / "runs").glob("sweep-*.json"))
    assert proc.stdout.split() == [
        "sbatch", "--parsable", "--array=2-3,5%2", "--job-name=sweep-runs",
        f"--output={tmp_path}/runs/logs/%a-%A.out", f"--export=ALL,PREALIGN_SWEEP={tasks}", "--time=00:10:00",
        "--partition=gpu", str(ROOT / "launchers/slurm/train.sbatch")]
    for name in ("tiny_prealign_s1", "tiny_prealign_s2", "small_prealign_s1"):
        run_folder.mark_finished(tmp_path / "runs" / name)
    done = run_tool("launchers/submit_sweep.py", str(path), "--dry-run")
    assert done.returncode == 0 and done.stdout == "" and "every run is finished" in done.stderr


def test_array_spec():
    import importlib.util

    spec = importlib.util.spec_from_file_location("submit_sweep", ROOT / "launchers/submit_sweep.py")
    submit_sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(submit_sweep)
    array_spec = submit_sweep.array_spec

    assert array_spec([0, 1, 2, 3, 5, 7, 8], None) == "0-3,5,7-8"
    assert array_spec([4], 3) == "4%3"
