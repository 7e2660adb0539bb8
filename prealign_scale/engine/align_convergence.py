"""Whether phase 1 aligned the dictionary: an early end when it did, a warning when it did not.

Both read the in-training alignment probe (`probe_callback.AlignmentProbe.latest`, the record of its latest
run). The number they use is the **seen retrieval**: translation retrieval accuracy of the probe's ``seen``
group (words of the table's align part), at the best layer; with several target languages (``seen:de``,
``seen:fr``, ...) the lowest of the groups' best-layer accuracies.

- ``align.stop_at_seen_acc: x`` ends phase 1 as done after the first probe whose seen retrieval is >= x
  (``should_end_phase``; needs ``run.probe_every > 0``, checked by the config). The reason is printed and
  written to metrics.jsonl (``{"kind": "event", "event": "align_stop", ...}``); the checkpoint is saved as the
  phase's end (`callbacks.Checkpointing`), so phase 2 starts from it and a restart does not train it further.
- ``align.warn_below_seen_acc: y`` (default 0.9): when phase 1 ends (all steps, or early), a WARNING if the
  last probe's seen retrieval is below y, saying what to do (more ``align.epochs``), on the console (rank
  0); a note when no probe ran. (Only the opt-in early end adds a line to metrics.jsonl.)

Applies to phases with ``trains_alignment`` (phase 1). Every rank holds the same probe record, and the loop
agrees the early end over the ranks anyway.
"""

from __future__ import annotations

import sys

from prealign_scale.config import Config
from prealign_scale.engine.callback import Callback


def seen_retrieval(record: dict | None) -> tuple[float, int] | None:
    """(accuracy, layer index) of a probe record's seen retrieval: the best layer of each ``probe_seen*_acc``
    group, the lowest over the groups; None without a seen group or value."""
    if record is None:
        return None
    worst = None
    for key, values in record.items():
        if not (key.startswith("probe_seen") and key.endswith("_acc")):
            continue
        layers = [(v, i) for i, v in enumerate(values) if v is not None]
        if not layers:
            continue
        best = max(layers)
        worst = best if worst is None or best[0] < worst[0] else worst
    return worst


class AlignConvergence(Callback):
    """`align.stop_at_seen_acc` (an early end of phase 1) and the end-of-phase warning, from `probe.latest`.

    `probe`: the run's `AlignmentProbe` or None (no probe: no early end, a note at the phase end); `metrics`:
    rank 0's `callbacks.MetricsFile` (None on the other ranks, which stay silent)."""

    def __init__(self, cfg: Config, probe=None, metrics=None):
        self.stop_at, self.warn_below = cfg.align.stop_at_seen_acc, cfg.align.warn_below_seen_acc
        self.probe, self.metrics = probe, metrics
        self.probe_every = cfg.run.probe_every

    def _seen(self) -> tuple[float, int] | None:
        return seen_retrieval(self.probe.latest if self.probe is not None else None)

    def should_end_phase(self, loop) -> bool:
        if not loop.phase.trains_alignment or self.stop_at is None:
            return False
        seen = self._seen()
        if seen is None or self.probe.latest.get("step") != loop.state.step or seen[0] < self.stop_at:
            return False  # only a probe of this very step decides
        self._event(loop, "align_stop", f"phase {loop.phase.name} ends at step {loop.state.step} of "
                    f"{loop.phase.total_steps}: seen retrieval {seen[0]:.3f} (layer {seen[1]}) >= "
                    f"align.stop_at_seen_acc={self.stop_at:g}; saved as the end of the phase", seen)
        return True

    def on_phase_end(self, loop) -> None:
        finished = loop.ended_early or loop.state.step >= loop.phase.total_steps
        if not loop.phase.trains_alignment or not finished:
            return  # a stop for a signal or run.stop_after: the phase goes on after the restart
        seen = self._seen()
        if seen is None:
            self._say(f"note: phase {loop.phase.name} ended without an alignment probe (run.probe_every="
                      f"{self.probe_every}), so nobody checked how well it aligned the dictionary; set "
                      "run.probe_every > 0 to see the seen retrieval (aim for >= 0.9)")
            return
        if seen[0] < self.warn_below:  # console only: metrics.jsonl keeps its records as they were
            self._say(f"WARNING: phase {loop.phase.name} ended at step "
                        f"{loop.state.step} with seen retrieval {seen[0]:.3f} (best layer {seen[1]}), below "
                        f"align.warn_below_seen_acc={self.warn_below:g}: the dictionary is not yet aligned. "
                        "Train phase 1 longer (raise align.epochs, or align.steps; optionally with "
                        "align.stop_at_seen_acc to end it once aligned)")

    def _event(self, loop, event: str, message: str, seen: tuple[float, int]) -> None:
        self._say(message)
        if self.metrics is not None:
            self.metrics.write({"kind": "event", "phase": loop.phase.name, "step": loop.state.step,
                                "event": event, "seen_acc": round(seen[0], 6), "seen_layer": seen[1],
                                "message": message})

    def _say(self, message: str) -> None:
        if self.metrics is not None:  # rank 0
            print(f"[prealign] {message}", file=sys.stderr, flush=True)
