"""Learning-rate schedule as a pure function of the step (so resuming needs only the step number).

Warmup: linear from lr/warmup to lr over the first ``round(warmup_frac * total_steps)`` steps (step 0 already
trains with a non-zero rate). Then decay towards ``min_lr_ratio * lr`` (reached one step after the last):

- ``linear`` (phase 1, the release's choice): straight line;
- ``cosine`` (phase 2): half a cosine;
- ``constant``: no decay.
"""

from __future__ import annotations

import math


def warmup_steps(total_steps: int, warmup_frac: float) -> int:
    return round(warmup_frac * total_steps)


def lr_at(step: int, *, total_steps: int, lr: float, warmup_frac: float, schedule: str,
          min_lr_ratio: float = 0.0) -> float:
    """Learning rate of optimizer step `step` (0-based) out of `total_steps`."""
    if not 0 <= step < max(total_steps, 1):
        raise ValueError(f"lr_at: step {step} outside [0, {total_steps})")
    warm = warmup_steps(total_steps, warmup_frac)
    if step < warm:
        return lr * (step + 1) / warm
    if schedule == "constant":
        return lr
    decay_steps = total_steps - warm
    progress = (step - warm) / decay_steps  # 0 at the first decay step; min_lr would be the step after the last
    min_lr = lr * min_lr_ratio
    if schedule == "linear":
        return min_lr + (lr - min_lr) * (1.0 - progress)
    if schedule == "cosine":
        return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"lr_at: unknown schedule {schedule!r} (linear, cosine, constant)")
