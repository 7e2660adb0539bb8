"""Phase 1, alignment initialisation (METHOD.md §2): dictionary batches in, L_LM + alpha * L_align out.

This module handles the batches and the model forward: one optimizer step = `grad_accum` micro-batches;
each micro-batch is `entries_per_rank` dictionary entries on every data-parallel rank (one row per word;
word counts differ between ranks). The model runs on the words (plain causal attention: words are
right-padded, so no real token ever sees a pad; with ``align.word_bos`` each word follows a BOS), giving per-token LM losses and, through the hidden-state
taps (:mod:`prealign_scale.model.taps`), the per-layer word vectors
(:mod:`prealign_scale.alignment.word_vectors`). The objective itself (gather over ranks, global
normalisation, the alpha mix) is :mod:`prealign_scale.alignment.objective`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from prealign_scale.alignment.objective import PreAlignObjective
from prealign_scale.alignment.table import AlignmentTable
from prealign_scale.alignment.word_vectors import word_vectors
from prealign_scale.config import AlignConfig, Config
from prealign_scale.data.dict_loader import DictionaryLoader
from prealign_scale.data.shard_format import IGNORE_INDEX
from prealign_scale.dist import all_reduce_sum
from prealign_scale.engine.device import compute_device
from prealign_scale.engine.phase import Phase
from prealign_scale.model.taps import UNEMBED_ATTR, HiddenStateTaps


class AlignPhase(Phase):
    name = "align"
    uses_word_vectors = True
    trains_alignment = True  # align.stop_at_seen_acc and the end-of-phase warning (align_convergence.py)
    # Never recomputes: its word vectors come from hooks inside the blocks, and a recomputed block produces its
    # forward output without autograd history (and dictionary words are short anyway).
    allows_recompute = False

    @staticmethod
    def section(cfg: Config) -> AlignConfig:
        return cfg.align

    @staticmethod
    def micro_batch_size(cfg: Config) -> int:
        return cfg.align.entries_per_rank

    def __init__(self, cfg: Config, engine, *, dp_rank: int, dp_world_size: int, dp_group):
        self.cfg, self.engine = cfg, engine
        self.total_steps, self.grad_accum = cfg.align.steps, int(cfg.align.grad_accum)
        self.dp_world_size, self.dp_group = dp_world_size, dp_group
        self.objective = PreAlignObjective(tau=cfg.align.tau, alpha=cfg.align.alpha, impl=cfg.align.loss_impl,
                                           grad_accum=self.grad_accum, dp_world_size=dp_world_size,
                                           group=dp_group)
        table = AlignmentTable.load(cfg.data.table_dir)
        check_table_vocab(table, int(cfg.model.vocab_size))
        if cfg.align.word_bos and cfg.align.bos_id is None:
            raise ValueError("align.word_bos is on but align.bos_id is unresolved (load_config takes it from "
                             "data.tokenizer_dir)")
        self.loader = DictionaryLoader(table, cfg.align.entries_per_rank, dp_rank=dp_rank,
                                       dp_world_size=dp_world_size, seed=cfg.run.seed, pad_id=0,
                                       max_word_tokens=cfg.model.seq_len,
                                       bos_id=cfg.align.bos_id if cfg.align.word_bos else None)
        self._it = None
        self.taps = HiddenStateTaps(engine.module)
        self.unembed = getattr(engine.module, UNEMBED_ATTR)
        self.device = compute_device()

    # --- data ---------------------------------------------------------------------------------------------
    def fetch(self) -> list[dict]:
        if self._it is None:
            self._it = iter(self.loader)
        return [next(self._it) for _ in range(self.grad_accum)]

    def loader_state(self) -> dict:
        return self.loader.state_dict()

    def load_loader_state(self, state: dict) -> None:
        self.loader.load_state_dict(state)
        self._it = None

    def load_remapped_loader_state(self, states: list[dict]) -> None:
        self.loader.load_remapped_state(states[0])  # a global position: the same on every old rank
        self._it = None

    # --- loss ---------------------------------------------------------------------------------------------
    def prepare(self, batches: list[dict]) -> dict:
        """Global counts of the step (one all-reduce): LM loss tokens and input tokens."""
        local = torch.tensor([sum(int((b["targets"] != IGNORE_INDEX).sum()) for b in batches),
                              sum(int(b["lengths"].sum()) for b in batches)], dtype=torch.float64)
        total = all_reduce_sum(local.to(self.device), self.dp_group)
        return {"lm_tokens": total[0].clamp_min(1.0).item(), "tokens": int(total[1].item())}

    def micro_loss(self, batch: dict, ctx: dict) -> tuple[Tensor, dict]:
        dev = self.device
        ids, pos = batch["input_ids"].to(dev), batch["position_ids"].to(dev)
        targets, mask = batch["targets"].to(dev), batch["word_mask"].to(dev)  # the word's tokens, never BOS
        entry = batch["entry_ids"].to(dev)
        loss_mask = targets != IGNORE_INDEX
        # forward: per-token LM losses of the words; the taps keep the hidden states of every layer
        with self.taps:
            per_token = self.engine(ids, pos, None, labels=targets.clamp(min=0))  # [n, s]
        if not all(s.requires_grad for s in self.taps.states):
            raise RuntimeError("alignment phase: a hooked hidden state has no autograd history (activation "
                               "recomputation inside the blocks?); phase 1 must run without recomputation")
        rows = self.unembed(ids)  # [n, s, h] unembedding rows (ZeRO-3 gathers the weight for this module)
        vectors = word_vectors(self.taps.batch_first(), rows, mask)  # [L, n, h] mean over each word's own tokens
        self.taps.states = []
        lm_sum = (per_token.float() * loss_mask).sum()
        return self.objective.micro_loss(vectors, entry, lm_sum, ctx["lm_tokens"])

    def step_metrics(self, stats: list[dict], ctx: dict) -> dict:
        """Global values of the step for logging (collective: every rank calls it)."""
        return self.objective.step_metrics(stats, ctx["lm_tokens"])

    def seq_len_for_flops(self, batches: list[dict]) -> int:
        return max(int(b["input_ids"].shape[1]) for b in batches)

    def close(self) -> None:
        self.taps.remove()


def check_table_vocab(table: AlignmentTable, vocab_size: int) -> None:
    """Every token id of the table must be < vocab_size (else the embedding lookup fails mid-run)."""
    top = max(max(max(t) for t in e.tokens) for e in table.entries)
    if top >= vocab_size:
        raise ValueError(f"alignment table has token id {top} >= model.vocab_size {vocab_size}")
