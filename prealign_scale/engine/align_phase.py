"""Phase 1, alignment initialisation (METHOD.md §2): dictionary batches in, L_LM + alpha * L_align out.

One optimizer step = `grad_accum` micro-batches; each micro-batch is `entries_per_rank` dictionary entries on
every data-parallel rank (one row per word; word counts differ between ranks).

Per micro-batch m and rank r:
- the model runs on the words (plain causal attention: words are right-padded, so no real token ever sees
  a pad), giving per-token LM losses and, through hooks, the per-layer word vectors v_r [L, n_r, h];
- the vectors of all ranks are all-gathered with gradient (`collectives.gather_rows_with_grad`); rank r
  computes the loss rows of its own words against all words: per-layer sums S_r [L] and the number c_r of
  its words that have a positive;
- L_align(m) = mean_l (sum_r S_r[l]) / (sum_r c_r), the loss of the global micro-batch.

The step's loss is  L = L_LM + alpha * mean_m L_align(m),  with L_LM = (sum of the word tokens' LM losses
over all micro-batches and ranks) / (their number). DeepSpeed divides every backward by grad_accum and
averages gradients over the DP ranks, so rank r back-propagates, for micro-batch m,

    grad_accum * dp * ( lm_sum_{r,m} / N_tokens  +  alpha * mean_l S_r[l] / (sum_r c_r) / grad_accum )

and the optimizer sees exactly dL/dθ (checked against a single process by tests/test_engine_losses.py).
"""

from __future__ import annotations

import torch
from torch import Tensor

from prealign_scale.alignment.loss import positive_cosine
from prealign_scale.alignment.table import AlignmentTable
from prealign_scale.config import AlignConfig, Config
from prealign_scale.data.dict_loader import DictionaryLoader
from prealign_scale.data.shard_format import IGNORE_INDEX
from prealign_scale.engine.collectives import all_reduce_sum, gather_ids, gather_rows_with_grad
from prealign_scale.engine.device import compute_device
from prealign_scale.engine.hidden_states import UNEMBED_ATTR, HiddenStateTaps, word_vectors
from prealign_scale.engine.phase import Phase
from prealign_scale.kernels.align_loss import alignment_loss_rows


class AlignPhase(Phase):
    name = "align"
    uses_word_vectors = True
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
        table = AlignmentTable.load(cfg.data.table_dir)
        check_table_vocab(table, int(cfg.model.vocab_size))
        self.loader = DictionaryLoader(table, cfg.align.entries_per_rank, dp_rank=dp_rank,
                                       dp_world_size=dp_world_size, seed=cfg.run.seed, pad_id=0,
                                       max_word_tokens=cfg.model.seq_len)
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
        targets, mask = batch["targets"].to(dev), batch["attention_mask"].to(dev)
        entry = batch["entry_ids"].to(dev)
        loss_mask = targets != IGNORE_INDEX
        # forward: per-token LM losses of the words; the taps keep the hidden states of every layer
        with self.taps:
            per_token = self.engine(ids, pos, None, labels=targets.clamp(min=0))  # [n, s]
        if not all(s.requires_grad for s in self.taps.states):
            raise RuntimeError("alignment phase: a hooked hidden state has no autograd history (activation "
                               "recomputation inside the blocks?); phase 1 must run without recomputation")
        rows = self.unembed(ids)  # [n, s, h] unembedding rows (ZeRO-3 gathers the weight for this module)
        vectors = word_vectors(self.taps, rows, mask)  # [L, n, h] mean over each word's real tokens
        self.taps.states = []
        # every rank's words are the negatives of every other rank's: gather them, keeping the gradient
        vectors_all, offset = gather_rows_with_grad(vectors, self.dp_group)
        entry_all = gather_ids(entry, self.dp_group)
        sums, count = alignment_loss_rows(vectors, vectors_all, entry, entry_all, offset,
                                          tau=self.cfg.align.tau, impl=self.cfg.align.loss_impl)
        count_all = all_reduce_sum(count.to(torch.float64), self.dp_group).clamp_min(1.0)  # rows with a positive
        lm_sum = (per_token.float() * loss_mask).sum()
        # scaled so that DeepSpeed's 1/grad_accum and DP averaging give d(L_LM + alpha * L_align)/dθ
        ga, dp, alpha = self.grad_accum, self.dp_world_size, self.cfg.align.alpha
        align_share = sums.mean() / count_all.to(sums.dtype)
        loss = ga * dp * (lm_sum / ctx["lm_tokens"] + alpha * align_share / ga)
        stats = {
            "lm_sum": lm_sum.detach().double(),
            "align_sums": sums.detach().double(),
            "align_count_all": count_all.detach(),
            "pos_cos": positive_cosine(vectors_all.detach(), entry_all).double(),
        }
        return loss, stats

    def step_metrics(self, stats: list[dict], ctx: dict) -> dict:
        """Global values of the step for logging (collective: every rank calls it)."""
        lm = all_reduce_sum(torch.stack([s["lm_sum"] for s in stats]).sum(), self.dp_group) / ctx["lm_tokens"]
        per_micro = all_reduce_sum(torch.stack([s["align_sums"] for s in stats]), self.dp_group)  # [ga, L]
        counts = torch.stack([s["align_count_all"] for s in stats])[:, None]
        per_layer = (per_micro / counts).mean(dim=0)  # [L]
        cos = torch.stack([s["pos_cos"] for s in stats]).mean(dim=0)
        align = per_layer.mean().item()
        return {
            "loss": lm.item() + self.cfg.align.alpha * align,
            "lm_loss": lm.item(),
            "align_loss": align,
            "align_loss_layers": [round(x, 6) for x in per_layer.tolist()],
            "pos_cos": cos.mean().item(),
            "pos_cos_layers": [round(x, 6) for x in cos.tolist()],
        }

    def seq_len_for_flops(self, batches: list[dict]) -> int:
        return max(int(b["input_ids"].shape[1]) for b in batches)

    def close(self) -> None:
        self.taps.remove()


def check_table_vocab(table: AlignmentTable, vocab_size: int) -> None:
    """Every token id of the table must be < vocab_size (else the embedding lookup fails mid-run)."""
    top = max(max(max(t) for t in e.tokens) for e in table.entries)
    if top >= vocab_size:
        raise ValueError(f"alignment table has token id {top} >= model.vocab_size {vocab_size}")
