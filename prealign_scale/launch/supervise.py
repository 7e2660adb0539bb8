"""Supervise a launcher: SIGTERM / SIGINT / SIGUSR1 reach every training rank, and this process exits only
after the ranks have checkpointed and ended.

The stock launchers do not do that for us on one node: ``deepspeed`` installs no signal handler (a SIGTERM
ends it at once and leaves its ``deepspeed.launcher.launch`` child and the ranks running unsupervised), and
launch.py itself, or ``mpirun``, answer a SIGTERM by terminating the ranks and exiting (mpirun kills them
after a second or so), which can cut a checkpoint short. `supervise(cmd)` starts the launcher command in its
own session (a terminal's Ctrl-C reaches only us) and, on a signal, signals the training *ranks* directly,
never the launcher processes: the ranks agree to stop, checkpoint and exit 0, the launcher sees its ranks end
and exits, and then so do we, with its status.

    signal to the supervisor   what the ranks get           then
    SIGTERM, SIGINT (1st)      SIGTERM                      checkpoint at the current step, exit 0
    SIGUSR1                    SIGUSR1                      the same (SLURM's --signal=USR1@T)
    SIGTERM, SIGINT (2nd)      SIGKILL to the whole session  immediate stop; the previous checkpoint stays

A rank is a descendant process of the launcher whose environment names a rank (``RANK``, set by deepspeed's
launch.py and torchrun for their workers; ``OMPI_COMM_WORLD_RANK``, by mpirun), which the launcher
processes themselves do not have. A rank that appears after the signal (the launcher was still starting)
gets it when it appears. ``srun`` is the exception: its tasks run under slurmstepd, not below it, and a
SIGTERM to srun cancels the step (the tasks are killed within seconds) while a single SIGINT only prints
the tasks' state; srun forwards SIGUSR1 to every task and waits for them, so srun itself gets SIGUSR1 for a
stop signal (tests/test_slurm.py). Exit status: the launcher's (128 + N when a signal N ended it).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

RANK_VARIABLES = ("RANK", "OMPI_COMM_WORLD_RANK")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def log(msg: str) -> None:
    print(f"[supervise] {msg}", file=sys.stderr, flush=True)


def rank_processes(launcher_pid: int) -> list[psutil.Process]:
    """The training ranks below `launcher_pid` (and their own children, e.g. DataLoader workers)."""
    found = []
    try:
        children = psutil.Process(launcher_pid).children(recursive=True)
    except psutil.Error:
        return found
    for p in children:
        try:
            env = p.environ()
        except psutil.Error:  # gone, or not readable (another user)
            continue
        if any(k in env for k in RANK_VARIABLES):
            found.append(p)
    return found


def exit_status(returncode: int) -> int:
    return returncode if returncode >= 0 else 128 - returncode


def supervise(cmd: list[str], poll_s: float = 0.5) -> int:
    """Run `cmd` (a launcher command line) to its end, forwarding stop signals to its ranks; its exit status."""
    if os.environ.get("RANK") or os.environ.get("OMPI_COMM_WORLD_RANK"):
        log("RANK is set in this environment: the ranks could not be told from the launcher; unset it")
        return 2
    child = subprocess.Popen(cmd, start_new_session=True)
    state = {"signal": None, "stops": 0, "sent": set()}
    is_srun = Path(cmd[0]).name == "srun"

    def forward(sig: signal.Signals) -> None:
        if is_srun:  # srun forwards SIGUSR1 to every task (its tasks are not our descendants)
            if child.pid not in state["sent"]:
                child.send_signal(signal.SIGUSR1)
                state["sent"].add(child.pid)
            return
        for p in rank_processes(child.pid):
            if p.pid not in state["sent"]:
                try:
                    p.send_signal(sig)
                except psutil.Error:
                    continue
                state["sent"].add(p.pid)

    def handle(signum, frame) -> None:
        received = signal.Signals(signum)
        if received in STOP_SIGNALS:
            state["stops"] += 1
            if state["stops"] >= 2:
                log(f"second {received.name}: killing the launcher and its ranks (SIGKILL); the previous "
                    "checkpoint stays the resume point")
                try:
                    os.killpg(child.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                return
        sent = signal.SIGUSR1 if received == signal.SIGUSR1 or is_srun else signal.SIGTERM
        log(f"{received.name} received: {sent.name} to every rank{' (through srun)' if is_srun else ''}; waiting for their checkpoint "
            f"(a second SIGTERM / SIGINT kills them)")
        state["signal"], state["sent"] = sent, set()
        forward(sent)

    previous = {s: signal.signal(s, handle) for s in (*STOP_SIGNALS, signal.SIGUSR1)}
    try:
        while child.poll() is None:
            if state["signal"] is not None:
                forward(state["signal"])  # ranks started after the signal
            time.sleep(poll_s)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    if state["signal"] is not None:
        log(f"the launcher exited with status {exit_status(child.returncode)}")
    return exit_status(child.returncode)
