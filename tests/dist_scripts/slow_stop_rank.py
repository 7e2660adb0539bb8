"""A stand-in training rank for tests/test_supervise.py: on SIGTERM / SIGUSR1 it "checkpoints" for 2 s (writes
<out>/rank-<r>.saved with the signal's name), then exits 0. Without a signal it waits (at most 120 s)."""

import os
import signal
import sys
import time
from pathlib import Path

out = Path(sys.argv[1])
rank = os.environ.get("OMPI_COMM_WORLD_RANK") or os.environ.get("SLURM_PROCID") or os.environ["RANK"]
got = []
for s in (signal.SIGTERM, signal.SIGUSR1):
    signal.signal(s, lambda signum, frame: got.append(signal.Signals(signum).name))
(out / f"rank-{rank}.up").write_text("")
deadline = time.time() + 120
while not got and time.time() < deadline:
    time.sleep(0.05)
time.sleep(2)  # the checkpoint
(out / f"rank-{rank}.saved").write_text(got[0] if got else "timeout")
