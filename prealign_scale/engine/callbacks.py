"""What happens around a training step: metrics.jsonl, TensorBoard, the progress bar, pre-emption signals.

Only rank 0 writes files and draws the bar; `Preemption` runs on every rank (a signal may reach any of them,
and all must stop at the same step, so the loop all-reduces the flag).

metrics.jsonl: one JSON object per logged step, e.g.
``{"phase": "lm", "step": 12, "tokens": 98304, "loss": 3.21, "lm_loss": 3.21, "loss_en": 3.1, "lr": 2.9e-4,
"tokens_per_s": 5012.3, "mfu": null, "data_wait": 0.004, "step_time": 0.61}``. ``tokens`` counts input
tokens since the phase started (all ranks); ``mfu`` is only reported on GPUs whose peak is known.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

from prealign_scale.engine.checkpoint import PHASE_ORDER

# Dense bf16 peak FLOP/s per GPU (no sparsity), by a substring of torch.cuda.get_device_name().
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12}


def peak_flops() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


class MetricsFile:
    """Appends one line per logged step to metrics.jsonl (rank 0)."""

    def __init__(self, path: Path):
        self.path = path

    def truncate_after(self, phase: str, step: int) -> None:
        """On resume: drop lines of steps after the checkpoint (they will be trained and logged again)."""
        if not self.path.is_file():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            rec = json.loads(line)
            if (PHASE_ORDER[rec["phase"]], rec["step"]) <= (PHASE_ORDER[phase], step):
                keep.append(line)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(k + "\n" for k in keep))
        tmp.replace(self.path)

    def write(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


class TensorBoard:
    """Scalars to <out_dir>/tensorboard (rank 0); a no-op with one notice when tensorboard is missing."""

    def __init__(self, folder: Path, enabled: bool):
        self.writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            print(f"[prealign] TensorBoard logging is off: {exc} (pip install tensorboard)", file=sys.stderr)
            return
        self.writer = SummaryWriter(log_dir=str(folder))

    def write(self, record: dict, global_step: int) -> None:
        if self.writer is None:
            return
        phase = record["phase"]
        for k, v in record.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("step",):
                self.writer.add_scalar(f"{phase}/{k}", v, global_step)
            elif isinstance(v, list):
                for i, x in enumerate(v):
                    self.writer.add_scalar(f"{phase}/{k}/{i}", x, global_step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class Progress:
    """A tqdm bar per phase (rank 0): loss, tokens/s; tqdm itself shows the ETA."""

    def __init__(self, phase: str, total: int, initial: int, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=f"phase {phase}", unit="step", dynamic_ncols=True,
                            file=sys.stderr)

    def update(self, record: dict) -> None:
        if self.bar is None:
            return
        self.bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{record['tokens_per_s']:.0f}", refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Preemption:
    """SIGTERM / SIGUSR1 set a flag; the loop finishes the step, checkpoints and exits 0.

    The shard reader's DataLoader workers (``data.num_workers > 0``) ignore both signals
    (``shard_reader._ignore_preemption_signals``), so the main process checkpoints with its workers alive.
    On SLURM ask for SIGUSR1 (``#SBATCH --signal=USR1@180``): SIGTERM also comes with ``scancel``.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self):
        self.received: str | None = None
        self._previous = {}

    def install(self) -> None:
        for s in self.SIGNALS:
            self._previous[s] = signal.signal(s, self._handle)

    def _handle(self, signum, frame) -> None:
        self.received = signal.Signals(signum).name

    def uninstall(self) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous = {}


class StepTimer:
    """Wall time of a step and of its data fetch (for tokens/s and the data-wait share)."""

    def __init__(self):
        self.t0 = self.t_data = 0.0

    def start(self) -> None:
        self.t0 = time.perf_counter()

    def data_done(self) -> None:
        self.t_data = time.perf_counter() - self.t0

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0
