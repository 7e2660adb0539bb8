"""The hooks of the training loop. Every side concern of training (metrics.jsonl, TensorBoard, the progress
bar, throughput, the alignment probe, checkpoints, pre-emption, the step budget) is a `Callback`; the run
registers a list of them (`run.py`), and the loop (`loop.py`) calls each hook on every callback, in that
order, on every rank (a callback that only rank 0 needs is registered on rank 0 only).

Per phase, in this order:

    on_phase_start(loop)          after engine.train(), before the first step
    per step:
      pre_fetch(loop)             before the step's micro-batches are fetched
      pre_step(loop, batches)     the micro-batches are fetched; next: learning rate, forward, backward, update
      post_step(loop, record)     after the update. `record` is the step's metrics line (global values); a
                                  callback may add keys, which the callbacks after it see
      should_stop(loop) -> reason this rank wants to stop after this step: a short reason (``SIGTERM
                                  received``), else None; the first reason ends the question (later callbacks
                                  are not asked), and the loop agrees across ranks (all-reduce, then every
                                  rank's reason is gathered so rank 0 can name it)
      should_end_phase(loop)      -> bool: the phase reached its goal early (e.g. phase 1's alignment): end it
                                  now, as DONE (the next phase follows); agreed across ranks in the same
                                  all-reduce as should_stop; the loop then sets ``loop.ended_early``
      end_step(loop, stopping)    after that agreement: where a checkpoint is saved (`stopping` is also True
                                  when the phase ends early)
    on_phase_end(loop)            always: after the last step, a stop, or an error
close()                           once, when the run ends (run.py)

`loop` is the running `loop.PhaseLoop`: ``loop.engine``, ``loop.phase``, ``loop.cfg``, ``loop.state`` (``step``
= optimizer steps done in the phase, ``tokens``) and ``loop.step_tokens`` (input tokens of the latest step, all
ranks).
"""

from __future__ import annotations


class Callback:
    """Does nothing at every hook; a side concern overrides the hooks it needs."""

    def on_phase_start(self, loop) -> None:
        pass

    def pre_fetch(self, loop) -> None:
        pass

    def pre_step(self, loop, batches: list[dict]) -> None:
        pass

    def post_step(self, loop, record: dict) -> None:
        pass

    def should_stop(self, loop) -> str | None:
        return None

    def should_end_phase(self, loop) -> bool:
        return False

    def end_step(self, loop, stopping: bool) -> None:
        pass

    def on_phase_end(self, loop) -> None:
        pass

    def close(self) -> None:
        pass
