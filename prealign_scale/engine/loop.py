"""The one training loop, shared by both phases: it fetches, steps and calls the callbacks' hooks.

A phase (the contract: `phase.py`) supplies its batches and its loss; every side concern (metrics, probe,
checkpoints, signals: `callbacks.py`, `probe_callback.py`) is a callback (the hooks: `callback.py`).

One optimizer step: fetch every micro-batch of the step first (so the token count of the whole step is
known before the first backward), set the learning rate for this step (from the phase's config section),
then forward/backward each micro-batch; DeepSpeed's ``engine.step()`` applies the update on the last one.
After the step: the callbacks see the step's record (metrics, probe), then the stop flag (pre-emption signal
or the per-process step budget) and the end-of-phase flag (the phase reached its goal early, e.g. phase 1's
seen retrieval) are agreed across ranks with one all-reduce (when a rank stops, every rank's reason is then
gathered: `stop_reasons`, `describe_stop`), then a checkpoint if one is due (an early end saves the phase as
done).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from prealign_scale.config import Config
from prealign_scale.engine.callback import Callback
from prealign_scale.engine.deepspeed_setup import set_lr
from prealign_scale.engine.schedule import lr_at


@dataclass
class LoopState:
    """Counters that survive a resume (stored in the checkpoint's client state with the loader)."""

    step: int = 0  # optimizer steps done in this phase
    tokens: int = 0  # input tokens seen in this phase, all ranks


def _agree_stop(reason: str | None, end_phase: bool = False) -> tuple[list[str | None] | None, bool]:
    """(every rank's stop reason by rank, or None when no rank wants to stop; whether any rank ends the phase).

    One all-reduce per step for both flags; the reasons are gathered only when some rank stops, so rank 0 can
    report the real cause (e.g. a signal that reached rank 3 only)."""
    t = torch.tensor([0.0 if reason is None else 1.0, 1.0 if end_phase else 0.0])
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    stop, end = (bool(x > 0) for x in t.tolist())
    if not stop:
        return None, end
    reasons: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(reasons, reason)
    return reasons, end


def describe_stop(reasons: list[str | None]) -> str:
    """``SIGTERM received`` when every rank gives that reason, else ``SIGTERM received by rank 1`` (each
    reason with its ranks, in rank order, joined by ``; ``)."""
    ranks: dict[str, list[int]] = {}
    for r, why in enumerate(reasons):
        if why is not None:
            ranks.setdefault(why, []).append(r)
    parts = []
    for why, rs in ranks.items():
        if len(rs) == len(reasons):
            parts.append(why)
        else:
            parts.append(f"{why} by rank{'s' if len(rs) > 1 else ''} {', '.join(map(str, rs))}")
    return "; ".join(parts)


class PhaseLoop:
    """Trains `phase` on `engine` from `state.step` to its end, calling `callbacks` (in order) at each hook."""

    def __init__(self, engine, phase, cfg: Config, state: LoopState, callbacks: list[Callback]):
        self.engine, self.phase, self.cfg, self.state = engine, phase, cfg, state
        self.callbacks = callbacks
        self.step_tokens = 0  # input tokens of the latest step, all ranks
        self.stop_reasons: list[str | None] | None = None  # every rank's reason, once the ranks agreed to stop
        self.ended_early = False  # the ranks agreed to end the phase early, as done (a should_end_phase)

    def _hook(self, name: str, *args) -> None:
        for cb in self.callbacks:
            getattr(cb, name)(self, *args)

    def run(self) -> str:
        """Returns "done" (also when a callback ended the phase early: ``ended_early``), or "stopped"
        (pre-empted / step budget used; the checkpoint is saved)."""
        p = self.phase.section(self.cfg)
        engine, phase, state = self.engine, self.phase, self.state
        engine.train()
        try:
            self._hook("on_phase_start")
            while state.step < phase.total_steps:
                self._hook("pre_fetch")
                batches = phase.fetch()
                self._hook("pre_step", batches)
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
                state.step += 1
                state.tokens += ctx["tokens"]
                self.step_tokens = ctx["tokens"]

                record = {"phase": phase.name, "step": state.step, "tokens": state.tokens, **values, "lr": lr}
                self._hook("post_step", record)  # throughput, metrics, progress, probe
                reason = next((r for cb in self.callbacks if (r := cb.should_stop(self))), None)
                wants_end = any(cb.should_end_phase(self) for cb in self.callbacks)
                self.stop_reasons, self.ended_early = _agree_stop(reason, wants_end)
                stopping = self.stop_reasons is not None
                self._hook("end_step", stopping or self.ended_early)  # the checkpoint
                if stopping:
                    return "stopped"
                if self.ended_early:
                    break
        finally:
            self._hook("on_phase_end")
        return "done"
