"""The registry of training phases: their names (the `run.phase` values and checkpoint tag prefixes), their
order, and their classes. Everything that differs between the phases lives in the phase classes
(`align_phase.AlignPhase`, `lm_phase.LMPhase`; the contract: `phase.Phase`); code outside them asks this
registry for the class and never compares phase names.
"""

from __future__ import annotations

from prealign_scale.config import Config

PHASE_NAMES = ("align", "lm")  # training order
PHASE_ORDER = {name: i for i, name in enumerate(PHASE_NAMES)}


def phase_class(name: str) -> type:
    """The class of phase `name` (imported on first use: each pulls in its data loader and its loss)."""
    from prealign_scale.engine.align_phase import AlignPhase
    from prealign_scale.engine.lm_phase import LMPhase

    return {cls.name: cls for cls in (AlignPhase, LMPhase)}[name]


def steps_before(cfg: Config, name: str) -> int:
    """Steps of the phases before `name` (TensorBoard's x-axis: phase 2 continues after phase 1)."""
    return sum(phase_class(n).section(cfg).steps for n in PHASE_NAMES[:PHASE_ORDER[name]])
