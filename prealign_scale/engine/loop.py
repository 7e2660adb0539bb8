"""The one training loop, shared by both phases. A phase supplies only its batches and its loss.

A phase object (`AlignPhase`, `LMPhase`) provides:

    total_steps, grad_accum, name
    fetch() -> list of grad_accum micro-batches        (timed as data wait)
    prepare(batches) -> ctx                            (collective: the step's global token counts)
    micro_loss(batch, ctx) -> (loss to backward, stats)
    step_metrics(stats, ctx) -> dict of global values  (collective)
    loader_state() / load_loader_state(state)          (the exact data position)
    seq_len_for_flops(batches) -> int

One optimizer step: fetch every micro-batch of the step first (so the token count of the whole step is
known before the first backward), set the learning rate for this step, then forward/backward each
micro-batch; DeepSpeed's ``engine.step()`` applies the update on the last one. After the step: metrics,
then the stop flag (pre-emption signal or the per-process step budget) is agreed across ranks with an
all-reduce, then a checkpoint if one is due.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from prealign_scale.config import Config
from prealign_scale.engine.callbacks import (
    MetricsFile,
    Preemption,
    Progress,
    StepTimer,
    TensorBoard,
    peak_flops,
)
from prealign_scale.engine.checkpoint import CheckpointManager
from prealign_scale.engine.deepspeed_setup import set_lr
from prealign_scale.engine.schedule import lr_at


@dataclass
class LoopState:
    """Counters that survive a resume (stored in the checkpoint's client state with the loader)."""

    step: int = 0  # optimizer steps done in this phase
    tokens: int = 0  # input tokens seen in this phase, all ranks


@dataclass
class StepBudget:
    """`run.stop_after`: stop (checkpoint, exit 0) after this many steps in this process; None = no limit."""

    remaining: int | None = None

    def spend(self) -> bool:
        """Count one step; True when the budget is now used up."""
        if self.remaining is None:
            return False
        self.remaining -= 1
        return self.remaining <= 0


@dataclass
class Loggers:
    metrics: MetricsFile | None  # None on ranks other than 0
    tensorboard: TensorBoard | None
    progress_enabled: bool
    global_step_offset: int = 0  # TensorBoard x-axis: phase 2 continues after phase 1


def _agree_stop(flag: bool) -> bool:
    t = torch.tensor([1.0 if flag else 0.0])
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def _probe(probe, engine, phase, state: LoopState, loggers: Loggers) -> None:
    """Run the alignment probe on every rank (collective forward); rank 0 logs it."""
    if probe is None or not probe.due(state.step, phase.total_steps):
        return
    record = probe(engine, phase.name, state.step)
    engine.train()
    if loggers.metrics is not None:
        loggers.metrics.write(record)


def train_phase(engine, phase, cfg: Config, *, state: LoopState, ckpt: CheckpointManager, loggers: Loggers,
                preemption: Preemption, budget: StepBudget, flops_per_token, probe=None) -> str:
    """Train `phase` from `state.step` to its end. Returns "done" or "stopped" (pre-empted / budget).

    `probe` (engine/probe_callback.py, optional) runs at step 0, every `run.probe_every` steps and at the end.
    """
    p = cfg.align if phase.name == "align" else cfg.lm
    rank0 = loggers.metrics is not None
    progress = Progress(phase.name, phase.total_steps, state.step, loggers.progress_enabled and rank0)
    peak, world = peak_flops(), dist.get_world_size()
    timer = StepTimer()
    engine.train()
    if state.step == 0:
        _probe(probe, engine, phase, state, loggers)
    try:
        while state.step < phase.total_steps:
            timer.start()
            batches = phase.fetch()
            timer.data_done()
            lr = lr_at(state.step, total_steps=phase.total_steps, lr=p.lr, warmup_frac=p.warmup_frac,
                       schedule=p.schedule, min_lr_ratio=p.min_lr_ratio)
            set_lr(engine, lr)
            ctx = phase.prepare(batches)
            stats = []
            for batch in batches:
                loss, st = phase.micro_loss(batch, ctx)
                engine.backward(loss)
                engine.step()  # DeepSpeed updates only at the accumulation boundary (the last micro-batch)
                stats.append(st)
            values = phase.step_metrics(stats, ctx)
            dt = timer.elapsed()
            state.step += 1
            state.tokens += ctx["tokens"]

            if rank0:
                tok_s = ctx["tokens"] / dt
                mfu = None
                if peak is not None:
                    mfu = flops_per_token(phase.seq_len_for_flops(batches)) * tok_s / (peak * world)
                record = {"phase": phase.name, "step": state.step, "tokens": state.tokens, **values, "lr": lr,
                          "tokens_per_s": tok_s, "mfu": mfu, "data_wait": timer.t_data / dt, "step_time": dt}
                if state.step % cfg.run.log_every == 0 or state.step == phase.total_steps:
                    loggers.metrics.write(record)
                    if loggers.tensorboard is not None:
                        loggers.tensorboard.write(record, loggers.global_step_offset + state.step)
                progress.update(record)

            _probe(probe, engine, phase, state, loggers)
            stop = _agree_stop(preemption.received is not None or budget.spend())
            due = cfg.run.ckpt_every > 0 and state.step % cfg.run.ckpt_every == 0
            if stop or due or state.step == phase.total_steps:
                ckpt.save(engine, cfg, phase=phase.name, step=state.step, phase_steps=phase.total_steps,
                          train_state={"loader": phase.loader_state(), "tokens": state.tokens})
            if stop:
                return "stopped"
    finally:
        progress.close()
    return "done"
