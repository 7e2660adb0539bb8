"""SLURM for real: a single-node cluster on this machine (scripts/slurm_local_cluster.sh), job arrays from a
sweep (launchers/submit_sweep.py + launchers/slurm/train.sbatch), pre-emption -> checkpoint -> requeue -> resume.

Needs Debian's slurm-wlm and munge (scripts/install.sh installs them; as root, the fixture installs them when
missing) and root. The cluster is stopped at the end of the module, also when a test fails.

First with a stand-in training script (tests/slurm_scripts/fake_train.py, no torch) to check the machinery
exactly, then with launchers/pretrain.py on the tiny data set (the engine's real checkpoints and resume).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from prealign_scale.engine.run_folder import mark_finished

ROOT = Path(__file__).resolve().parents[1]
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}
HOPELESS = {"PartitionConfig", "PartitionNodeLimit", "BadConstraints", "JobHeldAdmin", "JobHeldUser",
            "ReqNodeNotAvail", "InvalidAccount", "InvalidQOS"}
FAKE = ROOT / "tests/slurm_scripts/fake_train.py"
SBATCH = ROOT / "launchers/slurm/train.sbatch"
pytestmark = pytest.mark.slow


# ---------------------------------------------------------------------------------------------- the cluster
def ensure_slurm_installed() -> None:
    if shutil.which("slurmctld") and shutil.which("munged"):
        return
    if os.geteuid() != 0:
        pytest.skip("slurm-wlm and munge are not installed and this is not root: "
                    "apt-get install -y slurm-wlm munge")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "-qq", "slurm-wlm", "munge"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0:  # a fresh machine may have no package lists yet
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600, check=False)
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0 or not shutil.which("slurmctld"):
        pytest.skip(f"cannot install slurm-wlm munge: {proc.stderr.strip()[-800:]}")


@dataclass
class Cluster:
    scratch: Path
    env: dict  # the test's environment + SLURM_CONF + the train.sbatch settings

    def run(self, *cmd: str, check: bool = True, **extra_env) -> subprocess.CompletedProcess:
        env = dict(self.env, **{k: str(v) for k, v in extra_env.items()})
        proc = subprocess.run(list(cmd), cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
                              check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}\n"
                                 f"{self.diagnostics()}")
        return proc

    def diagnostics(self) -> str:
        """Daemon liveness and the ends of their logs (for failure messages)."""
        lines = []
        for name in ("slurmctld", "slurmd"):
            pid_file = self.scratch / f"{name}.daemon.pid"
            alive = pid_file.is_file() and Path(f"/proc/{pid_file.read_text().strip()}").exists()
            log = self.scratch / "log" / f"{name}.log"
            tail = "\n".join(log.read_text().splitlines()[-15:]) if log.is_file() else "(no log)"
            lines.append(f"--- {name}: {'running' if alive else 'NOT RUNNING'}\n{tail}")
        return "\n".join(lines)

    def jobs(self, job_id: str) -> list[dict]:
        """One dict per job (or array task) of `job_id`: JobId, ArrayTaskId, JobState, Restarts, ExitCode."""
        out = self.run("scontrol", "-o", "show", "job", job_id, check=False).stdout
        keys = ("JobId", "ArrayTaskId", "JobState", "Reason", "Restarts", "ExitCode")
        rows = []
        for line in out.splitlines():
            fields = dict(re.findall(r"(\w+)=(\S*)", line))
            rows.append({k: fields.get(k) for k in keys})
        return rows

    def wait(self, what: str, predicate, timeout: float, logs: list[Path] = (), job: str | None = None) -> None:
        """Poll `predicate` until true; fail with the queue and the logs after `timeout` s, or at once when
        `job` has ended or cannot run (a pending reason that no waiting resolves)."""
        deadline = time.monotonic() + timeout
        while not predicate():
            hopeless = job is not None and any(r["JobState"] in ENDED or r["Reason"] in HOPELESS
                                               for r in self.jobs(job))
            if hopeless or time.monotonic() > deadline:
                tails = "\n".join(f"--- {p}\n{p.read_text()[-3000:] if p.is_file() else '(missing)'}"
                                  for p in logs)
                queue = self.run("scontrol", "-o", "show", "job", check=False).stdout
                queue += self.run("scontrol", "-o", "show", "node", check=False).stdout + self.diagnostics()
                pytest.fail(f"{'gave up' if hopeless else 'timed out'} waiting for {what}\n{queue}\n{tails}")
            time.sleep(0.3)

    def wait_ended(self, job_id: str, timeout: float, logs: list[Path] = (), n: int = 1, max_restarts: int = 0):
        """Wait until the `n` jobs (array tasks) of `job_id` have ended; fail at once on an unexpected requeue
        (a run that exits 0 without its DONE marker is requeued by train.sbatch)."""
        def done() -> bool:
            rows = self.jobs(job_id)
            if any(int(r["Restarts"] or 0) > max_restarts for r in rows):
                pytest.fail(f"job {job_id} was requeued more than {max_restarts} times: {rows}\n"
                            + "\n".join(p.read_text()[-3000:] for p in logs if p.is_file()))
            return len(rows) >= n and all(r["JobState"] in ENDED for r in rows)

        self.wait(f"job {job_id} to end", done, timeout, logs)
        return self.jobs(job_id)


def free_ports(n: int) -> list[int]:
    """n distinct TCP ports that are free now (all held open together while they are picked)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for s in socks:
            s.bind(("", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    ensure_slurm_installed()
    if os.geteuid() != 0:
        pytest.skip("the local SLURM cluster runs as root (SlurmUser=root)")
    scratch = tmp_path_factory.mktemp("slurm")
    ctld_port, slurmd_port = free_ports(2)
    env = dict(os.environ, SLURM_CONF=str(scratch / "slurm.conf"), PREALIGN_SLURMCTLD_PORT=str(ctld_port),
               PREALIGN_SLURMD_PORT=str(slurmd_port), PREALIGN_PYTHON=sys.executable, PREALIGN_HOME=str(ROOT),
               DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    for k in ("PREALIGN_SWEEP", "PREALIGN_ENTRY", "PREALIGN_LAUNCH", "MASTER_ADDR", "MASTER_PORT", "RANK",
              "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(k, None)
    script = ["bash", str(ROOT / "scripts/slurm_local_cluster.sh")]
    try:
        proc = subprocess.run([*script, "start", str(scratch)], env=env, capture_output=True, text=True,
                              timeout=180, check=False)
        assert proc.returncode == 0, f"cluster start failed:\n{proc.stderr}"
        yield Cluster(scratch, env)
    finally:
        subprocess.run([*script, "stop", str(scratch)], env=env, capture_output=True, text=True, timeout=180,
                       check=False)


def starts(run_dir: Path) -> list[dict]:
    path = run_dir / "starts.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.is_file() else []


def write_sweep(path: Path, out_root: Path, overrides: list[str], axes: str, extra: str = "") -> Path:
    path.write_text(f"config: configs/tiny.yaml\nout_root: {out_root}\noverrides: {json.dumps(overrides)}\n"
                    f"axes:\n{axes}{extra}")
    return path


# ------------------------------------------------------------------------------ the machinery, stand-in job
def test_sweep_array_resolves_each_task_and_skips_finished(cluster, tmp_path):
    """3 runs, one finished before submission -> a 2-task array (ids 0,2); each task trains its own run."""
    out = tmp_path / "runs"
    sweep = write_sweep(tmp_path / "sweep.yaml", out, ["lm.steps=3"],
                        "  arm:\n    joint: [align.steps=0]\n    prealign: [align.steps=2]\n"
                        "  seed:\n    s1: run.seed=1\n    s2: run.seed=2\n",
                        "exclude:\n  - {arm: joint, seed: s2}\n")
    mark_finished(out / "prealign_s1")
    proc = cluster.run(sys.executable, "launchers/submit_sweep.py", str(sweep), "--", "--ntasks=1",
                       PREALIGN_ENTRY=FAKE)
    job = proc.stdout.strip()
    tasks = next(out.glob("sweep-*.json"))
    logs = [out / "logs" / f"{i}-{job}.out" for i in (0, 2)]
    rows = cluster.wait_ended(job, 120, logs, n=2)
    assert sorted((r["ArrayTaskId"], r["JobState"], r["ExitCode"]) for r in rows) == \
        [("0", "COMPLETED", "0:0"), ("2", "COMPLETED", "0:0")]

    expected = {"joint_s1": ("0", ["lm.steps=3", "align.steps=0", "run.seed=1"]),
                "prealign_s2": ("2", ["lm.steps=3", "align.steps=2", "run.seed=2"])}
    for name, (task, overrides) in expected.items():
        [rec] = starts(out / name)
        assert rec["argv"] == ["--config", "configs/tiny.yaml", *overrides, f"run.out_dir={out / name}"]
        assert rec["env"]["SLURM_ARRAY_TASK_ID"] == task and rec["env"]["PREALIGN_SWEEP"] == str(tasks)
        assert (out / name / "DONE").is_file()
    assert starts(out / "prealign_s1") == []  # finished before: never started

    # Everything finished: nothing to submit; with --all every task starts and skips its finished run.
    again = cluster.run(sys.executable, "launchers/submit_sweep.py", str(sweep))
    assert again.stdout == "" and "every run is finished; nothing to submit" in again.stderr
    job2 = cluster.run(sys.executable, "launchers/submit_sweep.py", str(sweep), "--all", "--", "--ntasks=1",
                       PREALIGN_ENTRY=FAKE).stdout.strip()
    rows = cluster.wait_ended(job2, 120, n=3)
    assert sorted((r["ArrayTaskId"], r["JobState"]) for r in rows) == \
        [("0", "COMPLETED"), ("1", "COMPLETED"), ("2", "COMPLETED")]
    for i, name in enumerate(["joint_s1", "prealign_s1", "prealign_s2"]):
        assert f"run {name} is finished ({out / name / 'DONE'} exists): skipping" in \
            (out / "logs" / f"{i}-{job2}.out").read_text()
    assert [len(starts(out / n)) for n in ("joint_s1", "prealign_s1", "prealign_s2")] == [1, 0, 1]


def release_after_requeue(cluster: Cluster, job: str, log: Path) -> None:
    """A requeued job waits for its BeginTime (about 2 minutes): start it now, once the node is idle again.

    The requeue revokes the job's credential on the node; slurmd refuses a new start whose credential is
    not newer than the revocation, at one-second resolution ("Job credential revoked", the job FAILS). So
    the release waits two seconds after the requeue: an ordering requirement, not a timing assumption.
    """
    cluster.wait("the requeue", lambda: any(r["Restarts"] == "1" and r["JobState"] == "PENDING"
                                            for r in cluster.jobs(job)), 120, [log], job)
    cluster.wait("the node to be idle", lambda: cluster.run("sinfo", "-h", "-o", "%T").stdout.strip() == "idle",
                 120, [log], job)
    time.sleep(2)
    cluster.run("scontrol", "update", f"JobId={job}", "StartTime=now")


@pytest.mark.parametrize("launch", ["tasks", "torchrun"])
def test_preemption_signal_requeues_and_resumes(cluster, tmp_path, launch):
    """SIGUSR1 to the job's steps -> the trainer checkpoints and exits 0 -> train.sbatch requeues -> resume.

    torchrun: SIGUSR1 reaches torchrun too; it ignores it (torchrun_node.sh), so its worker can checkpoint.
    """
    run_dir, log = tmp_path / "run", tmp_path / "job.out"
    job = cluster.run("sbatch", "--parsable", "--ntasks=1", f"--output={log}", str(SBATCH), "--config",
                      "configs/tiny.yaml", f"run.out_dir={run_dir}", PREALIGN_ENTRY=FAKE, PREALIGN_LAUNCH=launch,
                      PREALIGN_NPROC_PER_NODE=1, FAKE_TRAIN_MODE="preempt").stdout.strip()
    cluster.wait("the trainer to wait for a signal", (run_dir / "waiting").is_file, 120, [log], job)
    cluster.run("scancel", "--signal=USR1", job)
    release_after_requeue(cluster, job, log)
    [row] = cluster.wait_ended(job, 120, [log], max_restarts=1)
    assert (row["JobState"], row["Restarts"], row["ExitCode"]) == ("COMPLETED", "1", "0:0")
    first, second = starts(run_dir)
    assert (first["resumed"], first["env"]["SLURM_RESTART_COUNT"]) == (False, None)
    assert (second["resumed"], second["env"]["SLURM_RESTART_COUNT"]) == (True, "1")
    assert first["env"]["SLURM_JOB_ID"] == second["env"]["SLURM_JOB_ID"] == job
    # torchrun ran the trainer as rank 0 of 1, with SIGUSR1 ignored until the trainer installs its handler
    assert (first["env"]["RANK"], first["usr1_ignored_at_start"]) == (("0", True) if launch == "torchrun" else
                                                                      (None, False))
    text = log.read_text()
    assert f"training stopped early after a checkpoint (pre-emption signal); scontrol requeue {job}" in text
    assert "restart 1] run run finished" in text and (run_dir / "DONE").is_file()


def test_scancel_is_not_undone_by_a_requeue(cluster, tmp_path):
    """scancel: SIGTERM to the steps and the batch shell; the trainer checkpoints and exits 0, but the job stays
    cancelled (only a pre-emption signal to the steps alone leads to a requeue)."""
    run_dir, log = tmp_path / "run", tmp_path / "job.out"
    job = cluster.run("sbatch", "--parsable", "--ntasks=1", f"--output={log}", str(SBATCH), "--config",
                      "configs/tiny.yaml", f"run.out_dir={run_dir}", PREALIGN_ENTRY=FAKE,
                      FAKE_TRAIN_MODE="preempt").stdout.strip()
    cluster.wait("the trainer to wait for a signal", (run_dir / "waiting").is_file, 120, [log], job)
    cluster.run("scancel", job)
    cluster.wait("the batch script's last word", lambda: log.is_file() and "not requeueing" in log.read_text(), 120, [log])
    [row] = cluster.wait_ended(job, 120, [log])
    assert (row["JobState"], row["Restarts"]) == ("CANCELLED", "0")
    assert (run_dir / "fake_ckpt").read_text() == "SIGTERM\n" and not (run_dir / "DONE").exists()
    assert "stopped by SIGTERM after a checkpoint; not requeueing (resubmit to resume)" in log.read_text()


def test_failed_training_is_not_requeued(cluster, tmp_path):
    run_dir, log = tmp_path / "run", tmp_path / "job.out"
    job = cluster.run("sbatch", "--parsable", "--ntasks=1", f"--output={log}", str(SBATCH), "--config",
                      "configs/tiny.yaml", f"run.out_dir={run_dir}", PREALIGN_ENTRY="/bin/false").stdout.strip()
    [row] = cluster.wait_ended(job, 120, [log])
    assert (row["JobState"], row["Restarts"], row["ExitCode"]) == ("FAILED", "0", "1:0")
    assert "training step failed (exit 1); not requeueing" in log.read_text()


@pytest.mark.parametrize(("supervised", "sig"), [(False, signal.SIGUSR1), (False, signal.SIGTERM),
                                                 (True, signal.SIGTERM)])
def test_signals_to_srun(cluster, tmp_path, supervised, sig):
    """Signals through the launcher (issue 9), under srun, with stand-in ranks that take 2 s to "checkpoint"
    (tests/dist_scripts/slow_stop_rank.py): srun forwards SIGUSR1 to every task and waits for them; a SIGTERM
    to srun cancels the step (the tasks are killed before they saved); `launchers/supervise.py srun ...`
    turns a SIGTERM into that SIGUSR1, so the tasks save and the supervisor exits 0 after them."""
    cmd = ["srun", "--ntasks=2", sys.executable, "tests/dist_scripts/slow_stop_rank.py", str(tmp_path)]
    if supervised:
        cmd = [sys.executable, "launchers/supervise.py", *cmd]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        cluster.wait("both tasks to start", lambda: len(list(tmp_path.glob("rank-*.up"))) == 2 or
                     proc.poll() is not None, 120)
        assert proc.poll() is None, proc.communicate()[0]
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=90)
        t_exit = time.time()
    finally:
        if proc.poll() is None:
            proc.kill()
    saved = {p.name: p.read_text() for p in sorted(tmp_path.glob("rank-*.saved"))}
    if sig == signal.SIGTERM and not supervised:
        assert saved == {} and "forcing job termination" in out, out  # srun alone: no checkpoint
        return
    assert saved == {"rank-0.saved": "SIGUSR1", "rank-1.saved": "SIGUSR1"}, out
    assert all(p.stat().st_mtime <= t_exit for p in tmp_path.glob("rank-*.saved"))
    assert proc.returncode == 0, out


# --------------------------------------------------------------------------- the tiny pipeline, for real
@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from tiny_data import build_tiny_data

    return build_tiny_data(tmp_path_factory.mktemp("tiny_data"))


def data_overrides(data: dict) -> list[str]:
    return [f"data.shard_dir={data['shards']}", f"data.table_dir={data['table']}",
            f"data.tokenizer_dir={data['tokenizer']}", f"run.ds_config={ROOT / 'ds_configs/cpu_zero3.json'}",
            "run.progress=false", "lm.micro_batch_size=2", "align.entries_per_rank=8", "dist.timeout_minutes=5"]


def metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.is_file() else []


def test_tiny_pipeline_array(cluster, tmp_path, tiny_data):
    """A 2-task array of the tiny pipeline (phase 1 + phase 2 + export), one rank per task, both at once."""
    out = tmp_path / "runs"
    sweep = write_sweep(tmp_path / "sweep.yaml", out, data_overrides(tiny_data) + ["align.steps=2", "lm.steps=2"],
                        "  seed:\n    s1: run.seed=1\n    s2: run.seed=2\n")
    job = cluster.run(sys.executable, "launchers/submit_sweep.py", str(sweep), "--", "--ntasks=1").stdout.strip()
    logs = [out / "logs" / f"{i}-{job}.out" for i in (0, 1)]
    rows = cluster.wait_ended(job, 400, logs, n=2)
    assert sorted((r["ArrayTaskId"], r["JobState"], r["ExitCode"]) for r in rows) == \
        [("0", "COMPLETED", "0:0"), ("1", "COMPLETED", "0:0")], "\n".join(p.read_text()[-3000:] for p in logs)
    for seed in (1, 2):
        run_dir = out / f"s{seed}"
        assert [(m["phase"], m["step"]) for m in metrics(run_dir)] == \
            [("align", 1), ("align", 2), ("lm", 1), ("lm", 2)]
        assert (run_dir / "hf/config.json").is_file() and (run_dir / "DONE").is_file()
        assert (run_dir / "checkpoints/latest").read_text() == "lm-step00000002"
        assert f"seed: {seed}\n" in (run_dir / "config.yaml").read_text()
    # different seeds, different runs
    assert metrics(out / "s1")[0]["loss"] != metrics(out / "s2")[0]["loss"]


def test_tiny_pipeline_two_ranks_preempted_resumes(cluster, tmp_path, tiny_data):
    """2 ranks (srun tasks, SLURM rank discovery): SIGUSR1 in phase 2 -> checkpoint, requeue -> the requeued
    job resumes from that checkpoint and finishes; every step is logged exactly once."""
    run_dir, log = tmp_path / "run", tmp_path / "job.out"
    steps = 30
    job = cluster.run("sbatch", "--parsable", "--ntasks=2", f"--output={log}", str(SBATCH), "--config",
                      "configs/tiny.yaml", *data_overrides(tiny_data), "align.steps=2", f"lm.steps={steps}",
                      "run.export_hf=false", f"run.out_dir={run_dir}").stdout.strip()
    cluster.wait("phase 2 to start", lambda: any(m["phase"] == "lm" for m in metrics(run_dir)), 400, [log], job)
    cluster.run("scancel", "--signal=USR1", job)
    release_after_requeue(cluster, job, log)
    [row] = cluster.wait_ended(job, 300, [log], max_restarts=1)
    text = log.read_text()
    assert (row["JobState"], row["Restarts"], row["ExitCode"]) == ("COMPLETED", "1", "0:0"), text[-4000:]
    stopped = re.search(r"SIGUSR1 received: checkpoint \S+/checkpoints/(lm-step(\d+)) saved; exiting", text)
    assert stopped, text[-4000:]
    assert 1 <= int(stopped.group(2)) < steps
    tag, step = stopped.group(1), int(stopped.group(2))
    assert f"resuming from {run_dir}/checkpoints/{tag} (phase lm, step {step})" in text
    assert [(m["phase"], m["step"]) for m in metrics(run_dir)] == \
        [("align", 1), ("align", 2)] + [("lm", s) for s in range(1, steps + 1)]
    assert (run_dir / "DONE").is_file()
