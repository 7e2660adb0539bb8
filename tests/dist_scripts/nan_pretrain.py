"""launchers/pretrain.py with a fault injected for tests: the LM loss of rank $PREALIGN_TEST_NAN_RANK becomes NaN
at the steps listed in $PREALIGN_TEST_NAN_STEPS (1-based, counted from this process's first LM step), so its
gradients, and the global gradient norm of every rank, are NaN at those steps (tests/test_nonfinite_guard.py).
"""

from __future__ import annotations

import os
import runpy
from pathlib import Path

from prealign_scale.engine.lm_phase import LMPhase

NAN_STEPS = {int(s) for s in os.environ.get("PREALIGN_TEST_NAN_STEPS", "").split(",") if s}
NAN_RANK = int(os.environ.get("PREALIGN_TEST_NAN_RANK", "1"))
_micro_loss = LMPhase.micro_loss


def nan_micro_loss(self, batch, ctx):
    self.test_calls = getattr(self, "test_calls", 0) + 1
    loss, stats = _micro_loss(self, batch, ctx)
    step = (self.test_calls - 1) // self.grad_accum + 1
    if step in NAN_STEPS and int(os.environ["RANK"]) == NAN_RANK:
        loss = loss * float("nan")
        stats = {k: v * float("nan") if k == "lang_sums" else v for k, v in stats.items()}
    return loss, stats


LMPhase.micro_loss = nan_micro_loss

if __name__ == "__main__":  # the real front door, run as a script (it finds the package itself)
    runpy.run_path(str(Path(__file__).resolve().parents[2] / "launchers" / "pretrain.py"), run_name="__main__")
