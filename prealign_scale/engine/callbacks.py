"""The callbacks of a run (hooks: `callback.py`): the non-finite guard, throughput, metrics.jsonl, TensorBoard,
the progress bar, pre-emption signals, the `run.stop_after` step budget, checkpoint cadence. The alignment probe is in
`probe_callback.py`.

Only rank 0 writes files and draws the bar (run.py registers those callbacks on rank 0 only); `NonFiniteGuard`,
`Throughput`, `Preemption`, `StepBudget` and `Checkpointing` run on every rank (a signal may reach any of them, and all must
stop at the same step, so the loop all-reduces the stop flag; a checkpoint is a collective save).

Order within a step (the order run.py registers them): a bad step (non-finite loss or gradient norm) is
flagged in the record or stops the run (`NonFiniteGuard`), throughput is added to the record, the record is
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
import math
import os
import signal
import sys
import threading
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


class NonFiniteError(RuntimeError):
    """Too many steps with a non-finite loss or gradient norm (the message is one line)."""


class NonFiniteGuard(Callback):
    """Stops the run on a step whose loss or global gradient norm is not finite, once more than `max_bad`
    such steps were seen in the phase (in this process); the earlier ones are skipped and logged.

    The update of such a step is already dropped by DeepSpeed's ZeRO optimizer: it computes the global
    gradient norm before updating, treats a non-finite one as an overflow (gradients zeroed, no update,
    ``engine.skipped_steps`` + 1), so the weights stay those of the last good step. The step still counts (data
    position, learning-rate schedule), as in Megatron. A skipped step's record gets ``"bad_step": "<why>"``
    and ``"bad_steps"`` (the count in the phase) and is always written to metrics.jsonl. Past the limit the
    guard raises `NonFiniteError` in `post_step` on every rank (the loss and the norm are global values, so
    every rank decides the same), before the step's checkpoint: the latest checkpoint stays the last good one,
    run.py exits 1 with one line, without DONE and without the export.
    """

    def __init__(self, max_bad: int):
        self.max_bad = max_bad
        self.bad = 0
        self.skipped_seen = 0

    def on_phase_start(self, loop) -> None:
        self.bad = 0
        self.skipped_seen = getattr(loop.engine, "skipped_steps", 0)

    def post_step(self, loop, record: dict) -> None:
        why = []
        loss = record.get("loss")
        if loss is not None and not math.isfinite(loss):
            why.append(f"loss {loss}")
        norm = loop.engine.get_global_grad_norm() if hasattr(loop.engine, "get_global_grad_norm") else None
        if norm is not None and not math.isfinite(float(norm)):
            why.append(f"gradient norm {float(norm)}")
        skipped = getattr(loop.engine, "skipped_steps", 0)
        if skipped > self.skipped_seen and not why:
            why.append("the optimizer skipped the update (gradient overflow)")
        self.skipped_seen = skipped
        if not why:
            return
        self.bad += 1
        where = f"phase {loop.phase.name} step {loop.state.step}"
        if self.bad > self.max_bad:
            raise NonFiniteError(f"non-finite training at {where}: {', '.join(why)} (bad step {self.bad}, "
                                 f"run.max_bad_steps={self.max_bad})")
        record.update(bad_step=", ".join(why), bad_steps=self.bad)
        if dist.get_rank() == 0:
            print(f"[prealign] WARNING: {where}: {', '.join(why)}; the update was skipped (bad step {self.bad} of "
                  f"run.max_bad_steps={self.max_bad})", file=sys.stderr, flush=True)


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
        if log_due(loop, self.every) or "bad_step" in record:  # a skipped bad step is always logged
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


def deepspeed_runner_pid() -> int | None:
    """The pid of the ``deepspeed`` command this rank runs under (the parent of its parent,
    ``python -m deepspeed.launcher.launch``), or None under any other launcher (or off Linux)."""
    parent = os.getppid()
    try:
        cmd = Path(f"/proc/{parent}/cmdline").read_bytes()
        runner = _ppid_of(parent)
    except (OSError, ValueError, IndexError):
        return None
    return runner if b"deepspeed.launcher.launch" in cmd and runner > 1 else None


def _ppid_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])  # field 4 of stat


class Preemption(Callback):
    """SIGTERM / SIGUSR1 set a flag; the loop finishes the step, checkpoints and exits 0.

    The shard reader's DataLoader workers (``data.num_workers > 0``) ignore both signals
    (``shard_reader._ignore_preemption_signals``), so the main process checkpoints with its workers alive.
    On SLURM ask for SIGUSR1 (``#SBATCH --signal=USR1@180``): SIGTERM also comes with ``scancel``.

    The launcher watchdog: the stock ``deepspeed`` command installs no signal handler on one node, so a
    SIGTERM to it ends it at once and leaves ``deepspeed.launcher.launch`` and the ranks running unsupervised.
    Under that launcher each rank polls (every `watch_every` s, a thread) whether its launch.py still has the
    runner as its parent; once the runner is gone the rank stops as on a signal (reason ``the deepspeed
    launcher (pid N) exited``): checkpoint, exit 0. `launchers/supervise.py` is the front door that instead
    keeps the launcher alive until the checkpoint is written (docs/cluster.md).
    """

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self, watch_every: float = 1.0):
        self.received: str | None = None
        self.launcher_gone: str | None = None
        self.watch_every = watch_every
        self._previous = {}
        self._stop_watch = threading.Event()

    def install(self) -> None:
        for s in self.SIGNALS:
            self._previous[s] = signal.signal(s, self._handle)
        runner = deepspeed_runner_pid()
        if runner is not None:
            threading.Thread(target=self._watch, args=(os.getppid(), runner), daemon=True,
                             name="prealign-launcher-watch").start()

    def _handle(self, signum, frame) -> None:
        self.received = signal.Signals(signum).name

    def _watch(self, launch_pid: int, runner: int) -> None:
        while not self._stop_watch.wait(self.watch_every):
            try:
                gone = _ppid_of(launch_pid) != runner
            except (OSError, ValueError, IndexError):  # launch.py itself is gone
                gone = True
            if gone:
                self.launcher_gone = f"the deepspeed launcher (pid {runner}) exited"
                return

    def uninstall(self) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous = {}
        self._stop_watch.set()

    def should_stop(self, loop) -> str | None:
        if self.received is not None:
            return f"{self.received} received"
        return self.launcher_gone

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

    def should_stop(self, loop) -> str | None:
        return "run.stop_after reached" if self.spend() else None


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
