"""The alignment probe as a training callback: translation retrieval and cosine per layer, every K steps.

Runs on a fixed probe set (seen = the table's align part, unseen = its held-out part; `run.probe_pairs`
pairs per group, chosen by the run seed) at step 0 of each phase, every `run.probe_every` steps and at the
phase end, so `metrics.jsonl` shows whether the alignment of phase 1 survives pretraining (records with
``"kind": "probe"``; `prealign_scale.eval.report.plot_probe_over_training` draws them).

Every rank runs the probe (a ZeRO-3 forward gathers parameters collectively); rank 0 writes the record. The
latest record of the phase stays in ``latest`` on every rank (read by `align_convergence.AlignConvergence`).
With ``align.word_bos`` the words run after the BOS id, as phase 1 trains them (the vectors never pool it).
"""

from __future__ import annotations

import torch

from prealign_scale.config import Config
from prealign_scale.engine.callback import Callback


class AlignmentProbe(Callback):
    def __init__(self, cfg: Config, metrics=None):
        """`metrics`: the run's `callbacks.MetricsFile` on rank 0, None on the other ranks."""
        from prealign_scale.alignment.probe import probe_set_from_table
        from prealign_scale.alignment.table import AlignmentTable

        self.every = int(cfg.run.probe_every)
        self.metrics = metrics
        table = AlignmentTable.load(cfg.data.table_dir)
        self.probe_set = probe_set_from_table(table, max_pairs=cfg.run.probe_pairs, seed=cfg.run.seed)
        # words run after the BOS when phase 1 trains them so (align.word_bos), as in training
        self.bos_id = cfg.align.bos_id if cfg.align.word_bos else None
        self.latest: dict | None = None  # the record of the latest probe of the current phase (every rank)

    def due(self, step: int, total_steps: int) -> bool:
        return step == 0 or step % self.every == 0 or step == total_steps

    @torch.no_grad()
    def __call__(self, engine, phase: str, step: int) -> dict:
        from prealign_scale.alignment.probe import probe_metrics, run_probe
        from prealign_scale.model.view import MegatronView

        result = run_probe(MegatronView(engine.module), self.probe_set, bos_id=self.bos_id)
        return {"kind": "probe", "phase": phase, "step": step, **probe_metrics(result)}

    # --- hooks --------------------------------------------------------------------------------------------
    def on_phase_start(self, loop) -> None:
        self.latest = None
        if loop.state.step == 0:  # a resumed phase already has its step-0 record
            self._probe(loop)

    def post_step(self, loop, record: dict) -> None:
        self._probe(loop)

    def _probe(self, loop) -> None:
        """Every rank runs the probe when due (a collective forward); rank 0 logs it."""
        if not self.due(loop.state.step, loop.phase.total_steps):
            return
        record = self(loop.engine, loop.phase.name, loop.state.step)
        self.latest = record
        loop.engine.train()
        if self.metrics is not None:
            self.metrics.write(record)


def make_probe(cfg: Config, metrics=None) -> AlignmentProbe | None:
    """The probe when `run.probe_every` > 0 and the run has an alignment table, else None."""
    if cfg.run.probe_every <= 0 or not cfg.data.table_dir:
        return None
    return AlignmentProbe(cfg, metrics)
