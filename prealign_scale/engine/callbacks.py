"""The callbacks of a run (hooks: `callback.py`): throughput, metrics.jsonl, TensorBoard, the progress bar,
pre-emption signals, the `run.stop_after` step budget, checkpoint cadence. The alignment probe is in
`probe_callback.py`.

Only rank 0 writes files and draws the bar (run.py registers those callbacks on rank 0 only); `Throughput`,
`Preemption`, `StepBudget` and `Checkpointing` run on every rank (a signal may reach any of them, and all must
stop at the same step, so the loop all-reduces the stop flag; a checkpoint is a collective save).

Order within a step (the order run.py registers them): throughput is added to the record, the record is
written (metrics.jsonl, TensorBoard: every `run.log_every` steps and at the phase end), the bar advances, the
probe runs when due; then the stop flag is agreed and a checkpoint is saved when due (every
`run.ckpt_every` steps, at the phase end, and when the run stops).

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

import torch.distributed as dist

from prealign_scale.engine.callback import Callback
from prealign_scale.engine.checkpoint import CheckpointManager
from prealign_scale.engine.phases import PHASE_ORDER, steps_before

# Dense bf16 peak FLOP/s per GPU (no sparsity), by a substring of torch.cuda.get_device_name().
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12}


def peak_flops() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def log_due(loop, every: int) -> bool:
    """A step's record is logged every `every` steps and at the phase end."""
    return loop.state.step % every == 0 or loop.state.step == loop.phase.total_steps


class Throughput(Callback):
    """Adds tokens_per_s, mfu, data_wait (share of the step spent fetching) and step_time to each record.

    `flops_per_token(seq_len)` is the model's training FLOPs per token; mfu is None where the GPU's peak is
    unknown (and on CPU)."""

    def __init__(self, flops_per_token):
        self.flops_per_token = flops_per_token
        self.t0 = self.t_data = 0.0
        self.seq_len = 0

    def on_phase_start(self, loop) -> None:
        self.peak, self.world = peak_flops(), dist.get_world_size()

    def pre_fetch(self, loop) -> None:
        self.t0 = time.perf_counter()

    def pre_step(self, loop, batches: list[dict]) -> None:
        self.t_data = time.perf_counter() - self.t0
        self.seq_len = loop.phase.seq_len_for_flops(batches)

    def post_step(self, loop, record: dict) -> None:
        dt = time.perf_counter() - self.t0
        tok_s = loop.step_tokens / dt
        mfu = None
        if self.peak is not None:
            mfu = self.flops_per_token(self.seq_len) * tok_s / (self.peak * self.world)
        record.update(tokens_per_s=tok_s, mfu=mfu, data_wait=self.t_data / dt, step_time=dt)


class MetricsFile(Callback):
    """Appends one line per logged step to metrics.jsonl (rank 0): every `every` steps and at the phase end."""

    def __init__(self, path: Path, every: int = 1):
        self.path, self.every = path, every

    def post_step(self, loop, record: dict) -> None:
        if log_due(loop, self.every):
            self.write(record)

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


class TensorBoard(Callback):
    """Scalars to <out_dir>/tensorboard (rank 0), at the steps metrics.jsonl logs; the x-axis counts the steps
    of the earlier phases too. A no-op with one notice when tensorboard is missing."""

    def __init__(self, folder: Path, enabled: bool, every: int = 1):
        self.every, self.offset = every, 0
        self.writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            print(f"[prealign] TensorBoard logging is off: {exc} (pip install tensorboard)", file=sys.stderr)
            return
        self.writer = SummaryWriter(log_dir=str(folder))

    def on_phase_start(self, loop) -> None:
        self.offset = steps_before(loop.cfg, loop.phase.name)

    def post_step(self, loop, record: dict) -> None:
        if log_due(loop, self.every):
            self.write(record, self.offset + loop.state.step)

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


class Progress(Callback):
    """A tqdm bar per phase (rank 0): loss, tokens/s; tqdm itself shows the ETA."""

    def __init__(self):
        self.bar = None

    def on_phase_start(self, loop) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=loop.phase.total_steps, initial=loop.state.step, desc=f"phase {loop.phase.name}",
                        unit="step", dynamic_ncols=True, file=sys.stderr)

    def post_step(self, loop, record: dict) -> None:
        self.bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{record['tokens_per_s']:.0f}", refresh=False)
        self.bar.update(1)

    def on_phase_end(self, loop) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class Preemption(Callback):
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

    def should_stop(self, loop) -> bool:
        return self.received is not None

    def close(self) -> None:
        self.uninstall()


class StepBudget(Callback):
    """`run.stop_after`: stop (checkpoint, exit 0) after this many steps in this process; None = no limit."""

    def __init__(self, remaining: int | None = None):
        self.remaining = remaining

    def spend(self) -> bool:
        """Count one step; True when the budget is now used up."""
        if self.remaining is None:
            return False
        self.remaining -= 1
        return self.remaining <= 0

    def should_stop(self, loop) -> bool:
        return self.spend()


class Checkpointing(Callback):
    """Saves a checkpoint every `run.ckpt_every` steps (0: never in the middle), at the phase end, and when the
    ranks agreed to stop; with the data position and the token count, so a resume continues exactly. A phase
    ended early (``loop.ended_early``) is saved with ``phase_steps`` = its step, i.e. as done: the next phase
    starts from it and a restart does not train it further."""

    def __init__(self, ckpt: CheckpointManager, every: int):
        self.ckpt, self.every = ckpt, every

    def end_step(self, loop, stopping: bool) -> None:
        step = loop.state.step
        due = self.every > 0 and step % self.every == 0
        if stopping or due or step == loop.phase.total_steps:
            self.ckpt.save(loop.engine, loop.cfg, phase=loop.phase.name, step=step,
                           phase_steps=step if loop.ended_early else loop.phase.total_steps,
                           train_state={"loader": loop.phase.loader_state(), "tokens": loop.state.tokens})
