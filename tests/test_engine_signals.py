"""Pre-emption: SIGTERM in the middle of training -> the step finishes, a checkpoint is written, exit 0.

The two ranks are started the way ``srun`` starts tasks (SLURM_PROCID / SLURM_LOCALID / SLURM_NTASKS, one
node), which also exercises SLURM rank discovery, and each gets SIGTERM as a cluster pre-emption sends it.
Then through the `deepspeed` launcher: SIGTERM to `launchers/supervise.py` (the front door) checkpoints before
it exits; SIGTERM to the bare `deepspeed` command (which dies at once) is noticed by the ranks' watchdog.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from engine_common import ROOT, cpu_env, deepspeed_cmd, read_metrics, write_run_config
from fault_common import rank_processes
from reliability_cases import exit_line, record_case
from tiny_data import build_tiny_data

from prealign_scale.dist import free_port

pytestmark = pytest.mark.slow


def start_slurm_tasks(config: Path, port: int, *overrides: str) -> list[subprocess.Popen]:
    """Two srun-style tasks of launchers/pretrain.py. Each task's output goes to a log file next to the config
    (never a pipe: a rank writing more than a pipe holds while nobody reads it would block mid-training, and
    its peer with it, e.g. the progress bar of a long run)."""
    procs = []
    for rank in range(2):
        env = cpu_env(SLURM_PROCID=rank, SLURM_LOCALID=rank, SLURM_NTASKS=2, SLURM_JOB_NUM_NODES=1,
                      SLURM_JOB_ID=4242, MASTER_PORT=port)
        env.pop("MASTER_ADDR")  # discovered: one node -> 127.0.0.1
        cmd = [sys.executable, "launchers/pretrain.py", "--config", str(config), *overrides]
        log = config.parent / f"task{rank}.{port}.log"
        with open(log, "w") as f:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, text=True)
        proc.log = log  # type: ignore[attr-defined]
        procs.append(proc)
    return procs


def finish(procs: list[subprocess.Popen], timeout: float = 240) -> list[tuple[int, str]]:
    """Wait for every task (the deadline is shared); (exit code, its whole output) per task."""
    deadline = time.time() + timeout
    out = []
    for p in procs:
        try:
            p.wait(timeout=max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            for q in procs:  # never leave a hung task behind
                q.kill()
                q.wait()
            raise AssertionError(f"task still running after {timeout} s; its output:\n"
                                 + p.log.read_text()[-4000:]) from None
        out.append((p.returncode, p.log.read_text()))
    return out


def wait_for_training(procs: list[subprocess.Popen], run_dir: Path) -> None:
    """Until the tasks have logged two steps (training runs); fails when a task exits or after 180 s."""
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 180
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 2):
        assert all(p.poll() is None for p in procs), finish(procs)
        assert time.time() < deadline, "training did not start"
        time.sleep(0.2)


def start_training_job(tmp_path: Path, data) -> tuple[Path, Path, list[subprocess.Popen]]:
    """A 2-rank LM job (srun-style tasks) on `data` with no step limit, once it has logged two steps:
    (run folder, config file, the tasks)."""
    run_dir = tmp_path / "run"
    config = write_run_config(tmp_path / "cfg.yaml", data, run_dir, run={"phase": "lm", "export_hf": False},
                              lm={"steps": 100000})
    procs = start_slurm_tasks(config, free_port())
    wait_for_training(procs, run_dir)
    return run_dir, config, procs


def test_sigterm_checkpoints_and_exits_zero(tmp_path, tiny_data):
    run_dir, config, procs = start_training_job(tmp_path, tiny_data)  # tiny_data: tests/conftest.py
    for p in procs:
        p.send_signal(signal.SIGTERM)
    results = finish(procs)
    assert [rc for rc, _ in results] == [0, 0], results[0][1][-4000:] + results[1][1][-4000:]
    last = read_metrics(run_dir)[-1]
    tag = f"lm-step{last['step']:08d}"
    assert f"SIGTERM received: checkpoint {run_dir / 'checkpoints' / tag} saved; exiting" in results[0][1]
    assert (run_dir / "checkpoints/latest").read_text() == tag
    assert not (run_dir / "DONE").exists()  # an interrupted run is not marked finished
    assert json.loads((run_dir / "checkpoints" / tag / "state.json").read_text())["step"] == last["step"]

    # The checkpoint is usable: the same command resumes at the next step.
    results = finish(start_slurm_tasks(config, free_port(), "run.stop_after=1"))
    assert [rc for rc, _ in results] == [0, 0], results[0][1][-4000:]
    assert f"(phase lm, step {last['step']})" in results[0][1]
    resumed = read_metrics(run_dir)
    assert resumed[-1]["step"] == last["step"] + 1 and resumed[-2] == last
    record_case("training", "SIGTERM to both ranks mid-run (srun-style tasks, a cluster pre-emption)",
                "the step finishes, a checkpoint is written, exit 0, no DONE; the same command resumes at the next step",
                f"exits {[0, 0]}; latest {tag} at the last logged step; resumed at step {resumed[-1]['step']}")


def test_second_job_is_refused_and_a_signal_to_rank_1_is_named(tmp_path, tiny_data):
    """Issue 9 items 2 and 7, on one running job: a second job on the same run.out_dir exits 2 with one line and
    writes nothing; then SIGTERM reaches rank 1 only, and rank 0 reports that (not `run.stop_after reached`)."""
    run_dir, config, procs = start_training_job(tmp_path, tiny_data)
    config_before = (run_dir / "config.yaml").read_text()
    second = subprocess.run([sys.executable, "launchers/pretrain.py", "--config", str(config), "lm.steps=3"],
                            check=False,
                            cwd=ROOT, env=cpu_env(MASTER_PORT=free_port()), capture_output=True, text=True,
                            timeout=300)
    lines = [x for x in second.stderr.splitlines() if "is in use by another job" in x]
    assert second.returncode == 2 and len(lines) == 1, second.stderr[-4000:]
    assert lines[0].startswith(f"[prealign] run.out_dir {run_dir} is in use by another job ({run_dir / 'LOCK'}: ")
    assert f"pid {procs[0].pid}," in lines[0]
    assert (run_dir / "config.yaml").read_text() == config_before  # the second job wrote nothing
    record_case("training", "a second job on the same run.out_dir while one trains (before: both ran, every step "
                "twice in metrics.jsonl)", "exit 2, one line naming the holder, nothing written",
                f"{exit_line(second.returncode, lines[0])}; config.yaml unchanged: True")

    procs[1].send_signal(signal.SIGTERM)  # rank 1 only
    results = finish(procs)
    assert [rc for rc, _ in results] == [0, 0], results[0][1][-4000:] + results[1][1][-4000:]
    recs = read_metrics(run_dir)
    assert [r["step"] for r in recs] == list(range(1, len(recs) + 1))  # every step once: nothing duplicated
    tag = f"lm-step{recs[-1]['step']:08d}"
    assert (f"SIGTERM received by rank 1: checkpoint {run_dir / 'checkpoints' / tag} saved; exiting"
            in results[0][1]), results[0][1][-4000:]
    assert "run.stop_after reached" not in results[0][1]
    assert not (run_dir / "LOCK").exists()  # released at the exit
    record_case("training", "SIGTERM to rank 1 only (before: rank 0 said `run.stop_after reached`)",
                "the stop is agreed by every rank, the checkpoint saved, exit 0, the reason names rank 1",
                f"exits {[rc for rc, _ in results]}; `SIGTERM received by rank 1: checkpoint {tag} saved; exiting`; "
                f"every step logged once; LOCK released")


def wait_lines(run_dir: Path, n: int, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.time() + 300
    while not ((run_dir / "metrics.jsonl").is_file() and len(read_metrics(run_dir)) >= n):
        assert proc.poll() is None, log.read_text()[-6000:]
        assert time.time() < deadline, "training did not reach the step"
        time.sleep(0.2)


def test_sigterm_to_the_launcher_checkpoints_before_it_exits(tmp_path):
    """Issue 9 item 1. (a) `launchers/supervise.py deepspeed ...`: SIGTERM to the supervisor reaches both ranks,
    the checkpoint of the signal step is complete before the supervisor exits 0. (b) the bare `deepspeed`
    command: SIGTERM ends it at once (it has no handler); the ranks notice, checkpoint and exit 0, and the
    run resumes from there."""
    data = build_tiny_data(tmp_path / "data")
    run_dir = tmp_path / "run"
    config = write_run_config(tmp_path / "cfg.yaml", data, run_dir, run={"phase": "lm", "export_hf": False,
                                                                        "tensorboard": False},
                              lm={"steps": 100000})
    log = tmp_path / "supervised.log"
    with open(log, "w") as f:
        sup = subprocess.Popen([sys.executable, "launchers/supervise.py", *deepspeed_cmd(free_port(), config)],
                               cwd=ROOT, env=cpu_env(), stdout=f, stderr=subprocess.STDOUT)
    try:
        wait_lines(run_dir, 2, sup, log)
        ranks = [p for p in psutil.Process(sup.pid).children(recursive=True)
                 if any(a.endswith("launchers/pretrain.py") for a in p.cmdline())]
        sup.send_signal(signal.SIGTERM)
        rc = sup.wait(timeout=300)
        t_exit = time.time()
    finally:
        if sup.poll() is None:
            sup.kill()
    out = log.read_text()
    assert rc == 0, out[-6000:]
    assert len(ranks) >= 2 and not any(p.is_running() for p in ranks), "a rank outlived the supervisor"
    first = read_metrics(run_dir)
    tag = f"lm-step{first[-1]['step']:08d}"
    # both ranks get the signal; on a loaded machine one of them may see it a step before the other, and then
    # the agreed reason names that rank (`SIGTERM received by rank 0`, engine/loop.describe_stop)
    said = re.search(r"SIGTERM received(?: by ranks? [\d, ]+)?: checkpoint (\S+) saved; exiting", out)
    assert said, "\n".join(line for line in out.splitlines() if "arn" not in line)[-6000:]
    assert said.group(1) == str(run_dir / "checkpoints" / tag), said.group(0)
    assert (run_dir / "checkpoints/latest").read_text() == tag
    assert (run_dir / "checkpoints" / tag / "COMPLETE").stat().st_mtime <= t_exit  # written before the exit
    assert not (run_dir / "DONE").exists()
    record_case("training", "SIGTERM to launchers/supervise.py deepspeed ... mid-run",
                "reaches both ranks; the checkpoint is complete before the supervisor exits 0",
                f"supervisor exit {rc}; {tag} COMPLETE before the exit; no rank outlived it")

    # (b) the bare deepspeed command, resuming: SIGTERM to it
    log = tmp_path / "bare.log"
    with open(log, "w") as f:
        runner = subprocess.Popen(deepspeed_cmd(free_port(), config), cwd=ROOT, env=cpu_env(), stdout=f,
                                  stderr=subprocess.STDOUT)
    try:
        wait_lines(run_dir, len(first) + 2, runner, log)
        ranks = rank_processes(runner)
        assert sorted(ranks) == [0, 1], ranks
        runner.send_signal(signal.SIGTERM)
        assert runner.wait(timeout=60) == -signal.SIGTERM  # deepspeed's runner: no handler, gone at once
        _, alive = psutil.wait_procs(list(ranks.values()), timeout=300)
    finally:
        if runner.poll() is None:
            runner.kill()
    assert not alive, "a rank kept training after its launcher was gone"  # (their status is launch.py's to see)
    out = log.read_text()
    recs = read_metrics(run_dir)
    assert recs[: len(first)] == first and [r["step"] for r in recs] == list(range(1, len(recs) + 1))
    tag = f"lm-step{recs[-1]['step']:08d}"
    assert f"resuming from {run_dir / 'checkpoints'}/lm-step{first[-1]['step']:08d}" in out
    assert (f"the deepspeed launcher (pid {runner.pid}) exited: checkpoint {run_dir / 'checkpoints' / tag} saved"
            in out), out[-6000:]
    assert (run_dir / "checkpoints/latest").read_text() == tag
    record_case("training", "SIGTERM to the bare deepspeed command (before: it died and the ranks trained on "
                "unsupervised, no checkpoint)", "each rank notices its launcher is gone, checkpoints and exits 0",
                f"runner gone at once; `the deepspeed launcher (pid N) exited: checkpoint {tag} saved`; "
                "no rank left running; every step logged once")
