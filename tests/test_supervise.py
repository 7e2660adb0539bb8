"""launchers/supervise.py (prealign_scale/launch/supervise.py): a stop signal to the supervisor reaches every
rank, the ranks finish their (stand-in, 2 s) checkpoint, and only then does the supervisor exit, with the
launcher's status; a second SIGTERM / SIGINT kills everything. Stand-in ranks (tests/dist_scripts/
slow_stop_rank.py) under a stand-in launcher and under the real `mpirun`, which on its own kills its ranks
about a second after a SIGTERM (tested here too). The real deepspeed launcher: tests/test_engine_signals.py."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RANK_SCRIPT = str(ROOT / "tests/dist_scripts/slow_stop_rank.py")
# a launcher that starts 2 ranks (RANK in their environment, not its own) and exits with their worst status
FAKE_LAUNCHER = [sys.executable, "-c", (
    "import os, subprocess, sys\n"
    "ps = [subprocess.Popen([sys.executable, *sys.argv[1:]], env=dict(os.environ, RANK=str(r))) for r in (0, 1)]\n"
    "sys.exit(max(p.wait() for p in ps))\n")]
MPIRUN = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", "2", "--mca", "btl", "self,vader",
          "--mca", "oob_tcp_if_include", "lo"]


def run_until_up(cmd: list[str], tmp_path: Path) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 60
    while len(list(tmp_path.glob("rank-*.up"))) < 2:
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0]
        time.sleep(0.05)
    return proc


def supervised(launcher: list[str], tmp_path: Path) -> list[str]:
    rank = [sys.executable, RANK_SCRIPT, str(tmp_path)] if launcher[0] == "mpirun" else [RANK_SCRIPT, str(tmp_path)]
    return [sys.executable, "launchers/supervise.py", *launcher, *rank]


def saved(tmp_path: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(tmp_path.glob("rank-*.saved"))}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1])
def test_a_signal_reaches_the_ranks_and_the_supervisor_waits_for_them(tmp_path, sig):
    proc = run_until_up(supervised(FAKE_LAUNCHER, tmp_path), tmp_path)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=60)
    t_exit = time.time()
    sent = "SIGUSR1" if sig == signal.SIGUSR1 else "SIGTERM"  # SIGINT reaches the ranks as SIGTERM
    assert proc.returncode == 0, out
    assert saved(tmp_path) == {"rank-0.saved": sent, "rank-1.saved": sent}
    assert all(p.stat().st_mtime <= t_exit for p in tmp_path.glob("rank-*.saved"))
    assert f"[supervise] {sig.name} received: {sent} to every rank" in out


def test_a_second_stop_signal_kills_at_once(tmp_path):
    proc = run_until_up(supervised(FAKE_LAUNCHER, tmp_path), tmp_path)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGKILL, out
    assert saved(tmp_path) == {} and "second SIGINT: killing the launcher and its ranks (SIGKILL)" in out


@pytest.mark.skipif(shutil.which("mpirun") is None, reason="no mpirun")
@pytest.mark.parametrize(("supervise", "sig"), [(False, signal.SIGTERM), (False, signal.SIGUSR1),
                                                (True, signal.SIGTERM)])
def test_mpirun(tmp_path, supervise, sig):
    rank = [sys.executable, RANK_SCRIPT, str(tmp_path)]
    proc = run_until_up(supervised(MPIRUN, tmp_path) if supervise else MPIRUN + rank, tmp_path)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=60)
    if supervise or sig == signal.SIGUSR1:  # mpirun forwards SIGUSR1 to its ranks and waits for them
        assert proc.returncode == 0 and len(saved(tmp_path)) == 2, out
    else:  # mpirun alone on SIGTERM: the ranks are killed before their checkpoint is written
        assert proc.returncode != 0 and saved(tmp_path) == {}, out
