"""The run folder's lock (engine/run_folder.py, issue 9 item 2): taken once, refused to a second holder with one
line naming it, stale locks (a dead pid on this host, the same SLURM job) taken over with a warning."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
from reliability_cases import raised, record_case

from prealign_scale.engine.run_folder import LOCK_FILE, RunFolderBusy, acquire_lock, release_lock


def write_lock(folder, **fields):
    folder.mkdir(parents=True, exist_ok=True)
    held = {"host": socket.gethostname(), "pid": 1, "started": "2026-01-01T00:00:00+0000", "slurm_job_id": None}
    held.update(fields)
    (folder / LOCK_FILE).write_text(json.dumps(held))


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_lock_is_taken_and_released(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    run = tmp_path / "run"
    assert acquire_lock(run) is None
    held = json.loads((run / LOCK_FILE).read_text())
    assert held["host"] == socket.gethostname() and held["pid"] == os.getpid() and held["started"]
    release_lock(run)
    assert not (run / LOCK_FILE).exists()


def test_a_live_holder_is_refused_with_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        write_lock(run, pid=holder.pid, slurm_job_id="77")
        with pytest.raises(RunFolderBusy) as info:
            acquire_lock(run)
    finally:
        holder.kill()
        holder.wait()
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"run.out_dir {run} is in use by another job ({run / LOCK_FILE}: host ")
    assert f"pid {holder.pid}, started 2026-01-01T00:00:00+0000, SLURM job 77)" in msg
    release_lock(run)  # not ours: left alone
    kept = json.loads((run / LOCK_FILE).read_text())["pid"] == holder.pid
    assert kept
    record_case("training", "a second job on a run.out_dir whose LOCK a live process holds",
                "refused with one line naming the holder; the holder's lock untouched",
                f"{raised(info.value)}; holder's lock kept: {kept}")


def test_another_hosts_lock_is_refused(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    write_lock(tmp_path, host="some-other-node", pid=dead_pid())
    with pytest.raises(RunFolderBusy, match="host some-other-node") as info:
        acquire_lock(tmp_path)
    record_case("training", "a LOCK of another host (its pid cannot be checked)", "refused (delete it by hand)",
                raised(info.value))


def test_stale_locks_are_taken_over_with_a_warning(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    pid = dead_pid()
    write_lock(tmp_path, pid=pid)
    warning = acquire_lock(tmp_path)
    assert warning == (f"WARNING: took over the stale lock {tmp_path / LOCK_FILE} (process {pid} "
                       f"on this host is not running)")
    record_case("training", "a LOCK left by a killed job (its pid dead, this host)", "taken over with a warning",
                f"`{warning}`")
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    # a requeued SLURM job (same job id) on another node takes over its own lock
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    write_lock(tmp_path, host="some-other-node", pid=1, slurm_job_id="4242")
    warning = acquire_lock(tmp_path)
    assert "it names this SLURM job 4242 (a requeued job)" in warning
    record_case("training", "a LOCK of the same SLURM job id on another node (a requeue)",
                "taken over with a warning", f"`{warning}`")
