"""A stand-in for launchers/pretrain.py in the SLURM tests: no torch, starts in a fraction of a second.

Takes pretrain.py's arguments (``--config X ... run.out_dir=D``), appends one JSON line to ``D/starts.jsonl``
(its argv and the SLURM / rank variables it saw), then, by FAKE_TRAIN_MODE:

- ``finish`` (default): write the completion marker (prealign_scale.engine.run_folder.mark_finished) and exit 0.
- ``preempt``: if ``D/fake_ckpt`` exists (a restart), resume from it: mark finished, exit 0. Otherwise write
  ``D/waiting`` and wait for SIGUSR1 or SIGTERM (the engine's pre-emption signals), then write ``D/fake_ckpt``
  (the signal's name) and exit 0 without the marker, as the engine does after a pre-emption checkpoint. No
  signal within 120 s: exit 1.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

from prealign_scale.engine.run_folder import mark_finished

ENV_KEYS = ("SLURM_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT", "SLURM_PROCID", "SLURM_NTASKS", "RANK",
            "WORLD_SIZE", "MASTER_ADDR", "PREALIGN_SWEEP")


def main() -> int:
    argv = sys.argv[1:]
    out = Path([a.split("=", 1)[1] for a in argv if a.startswith("run.out_dir=")][-1])
    out.mkdir(parents=True, exist_ok=True)
    mode = os.environ.get("FAKE_TRAIN_MODE", "finish")
    resumed = (out / "fake_ckpt").is_file()
    record = {"argv": argv, "env": {k: os.environ.get(k) for k in ENV_KEYS}, "mode": mode, "resumed": resumed,
              "usr1_ignored_at_start": signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN}
    with open(out / "starts.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    if mode == "finish" or resumed:
        mark_finished(out, {"fake": True})
        return 0
    got: list[int] = []
    for sig in (signal.SIGUSR1, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: got.append(signum))
    (out / "waiting").write_text(str(os.getpid()))
    deadline = time.monotonic() + 120
    while not got and time.monotonic() < deadline:
        time.sleep(0.05)
    if not got:
        return 1
    (out / "fake_ckpt").write_text(signal.Signals(got[0]).name + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
