"""What a training phase is: the contract between the loop (`loop.py`) and a phase (`align_phase.py`,
`lm_phase.py`). A phase supplies its batches, its loss and its choices; the loop does the rest.

Before the engine exists (class level, used by `deepspeed_setup.build_engine` and `run.py`):

    name                               the `run.phase` value and checkpoint tag prefix
    section(cfg)                       the phase's config section: steps, grad_accum, lr, schedule, weight_decay
    micro_batch_size(cfg)              rows per micro-batch and rank (DeepSpeed's train_micro_batch_size_per_gpu)
    uses_word_vectors                  whether its loss needs the unembedding rows (`hidden_states.py`)
    allows_recompute                   whether megatron's activation recomputation may be on
    trains_alignment                   whether its goal is the word alignment the probe measures (phase 1:
                                       align.stop_at_seen_acc and the end-of-phase warning apply to it)
    prepare_model(model, cfg)          the phase's additions to the model, before deepspeed.initialize

On the engine (an instance: ``cls(cfg, engine, dp_rank=, dp_world_size=, dp_group=)``):

    total_steps, grad_accum
    fetch() -> list of grad_accum micro-batches        (timed as data wait)
    prepare(batches) -> ctx                            (collective: the step's global token counts, ctx["tokens"])
    micro_loss(batch, ctx) -> (loss to backward, stats)
    step_metrics(stats, ctx) -> dict of global values  (collective)
    loader_state() / load_loader_state(state)          (the exact data position)
    load_remapped_loader_state(states)                 (the position of a run with another data-parallel size:
                                                        one state per old rank; elastic.py)
    seq_len_for_flops(batches) -> int
    close()
"""

from __future__ import annotations

from torch import nn

from prealign_scale.config import Config


class Phase:
    name: str
    uses_word_vectors = False
    allows_recompute = True
    trains_alignment = False

    @staticmethod
    def section(cfg: Config):
        raise NotImplementedError

    @staticmethod
    def micro_batch_size(cfg: Config) -> int:
        raise NotImplementedError

    @staticmethod
    def prepare_model(model: nn.Module, cfg: Config) -> None:
        """Nothing by default."""
