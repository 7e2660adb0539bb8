"""The PreAlign stage-1 objective over data-parallel ranks (METHOD.md §2): L = L_LM + alpha * L_align.

One optimizer step = `grad_accum` micro-batches; each micro-batch holds some dictionary words on every
data-parallel rank (word counts differ between ranks). Per micro-batch m and rank r, the engine supplies the
per-layer word vectors v_r [L, n_r, h] (:mod:`prealign_scale.alignment.word_vectors`) and the sum of its
words' next-token LM losses. This module then:

- all-gathers the vectors of all ranks *with gradient* (`gather_rows_with_grad`) and their entry ids;
  rank r computes the loss rows of its own words against all words (:func:`alignment_loss_rows`): per-layer
  sums S_r [L] and the number c_r of its words that have a positive;
- L_align(m) = mean_l (sum_r S_r[l]) / (sum_r c_r), the loss of the global micro-batch.

The step's loss is  L = L_LM + alpha * mean_m L_align(m),  with L_LM = (sum of the word tokens' LM losses
over all micro-batches and ranks) / (their number). DeepSpeed divides every backward by grad_accum and
averages gradients over the DP ranks, so rank r back-propagates, for micro-batch m,

    grad_accum * dp * ( lm_sum_{r,m} / N_tokens  +  alpha * mean_l S_r[l] / (sum_r c_r) / grad_accum )

and the optimizer sees exactly dL/dθ (checked against a single process by tests/test_engine_losses.py; the
gather and the global normalisation alone by tests/test_align_loss.py on 2 gloo ranks).

Gather with gradient: `gather_rows_with_grad` concatenates every rank's rows along dim 1, padding to the
largest count for the collective. Its backward hands each rank the sum, over all ranks, of the gradients
flowing into its rows, which is exactly what the contrastive loss needs: rank r's loss uses every rank's
vectors as negatives, so rank r' must receive the gradients of every rank's loss with respect to its own
vectors. On NCCL the backward is a reduce-scatter; gloo has none, so there it is an all-reduce of the padded
gradient followed by taking this rank's slice.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from prealign_scale.alignment.loss import alignment_loss_rows, positive_cosine
from prealign_scale.dist import all_reduce_sum


# ------------------------------------------------------------------------------- gather with gradient
def all_gather_counts(n: int, group: dist.ProcessGroup | None, device: torch.device) -> list[int]:
    """Every rank's `n`, in rank order."""
    world = dist.get_world_size(group)
    t = torch.tensor([n], dtype=torch.long, device=device)
    out = [torch.zeros_like(t) for _ in range(world)]
    dist.all_gather(out, t, group=group)
    return [int(x.item()) for x in out]


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, counts: list[int], group) -> Tensor:  # x [L, n, H]
        rank, world = dist.get_rank(group), dist.get_world_size(group)
        size = max(counts)
        padded = x.new_zeros((x.shape[0], size, *x.shape[2:]))
        padded[:, : x.shape[1]] = x
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded.contiguous(), group=group)
        ctx.counts, ctx.group, ctx.rank, ctx.size = counts, group, rank, size
        return torch.cat([p[:, :c] for p, c in zip(parts, counts)], dim=1)

    @staticmethod
    def backward(ctx, grad: Tensor):
        counts, size = ctx.counts, ctx.size
        chunks = torch.split(grad, counts, dim=1)
        padded = grad.new_zeros((len(counts), grad.shape[0], size, *grad.shape[2:]))
        for i, c in enumerate(chunks):
            padded[i, :, : c.shape[1]] = c
        if dist.get_backend(ctx.group) == "nccl":
            mine = torch.empty_like(padded[0])
            dist.reduce_scatter_tensor(mine, padded.contiguous(), group=ctx.group)
        else:
            dist.all_reduce(padded, group=ctx.group)
            mine = padded[ctx.rank]
        return mine[:, : counts[ctx.rank]].contiguous(), None, None


def gather_rows_with_grad(x: Tensor, group: dist.ProcessGroup | None = None) -> tuple[Tensor, int]:
    """All ranks' `x` [L, n_r, ...] concatenated along dim 1 (rank order), with gradient.

    Returns (gathered [L, sum n_r, ...], row offset of this rank's rows in it).
    """
    counts = all_gather_counts(x.shape[1], group, x.device)
    offset = sum(counts[: dist.get_rank(group)])
    return _GatherRows.apply(x, counts, group), offset


def gather_ids(ids: Tensor, group: dist.ProcessGroup | None = None) -> Tensor:
    """All ranks' 1-D integer `ids` concatenated (no gradient), in rank order."""
    counts = all_gather_counts(ids.numel(), group, ids.device)
    padded = ids.new_zeros(max(counts))
    padded[: ids.numel()] = ids
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded, group=group)
    return torch.cat([p[:c] for p, c in zip(parts, counts)])


# -------------------------------------------------------------- the alignment loss of a global batch
@dataclass
class RankAlignRows:
    """This rank's part of the alignment loss of one global micro-batch."""

    sums: Tensor  # [L] sums of this rank's loss rows (with gradient)
    count_all: Tensor  # [] float64: words with a positive over all ranks (at least 1)
    vectors_all: Tensor  # [L, N, H] every rank's word vectors (gathered with gradient)
    entry_all: Tensor  # [N] their entry ids

    def share(self) -> Tensor:
        """mean_l S_r[l] / sum_r c_r: the shares of all ranks add up to L_align, and so do their gradients."""
        return self.sums.mean() / self.count_all.to(self.sums.dtype)


def rank_alignment_rows(vectors: Tensor, entry_ids: Tensor, *, tau: float, impl: str = "auto",
                        block_size: int | None = None, group: dist.ProcessGroup | None = None) -> RankAlignRows:
    """Gather every rank's words (collective), then compute the loss rows of this rank's words against all.

    vectors [L, n, H] (n may differ between ranks), entry_ids [n] int64.
    """
    # every rank's words are the negatives of every other rank's: gather them, keeping the gradient
    vectors_all, offset = gather_rows_with_grad(vectors, group)
    entry_all = gather_ids(entry_ids, group)
    sums, count = alignment_loss_rows(vectors, vectors_all, entry_ids, entry_all, offset, tau=tau, impl=impl,
                                      block_size=block_size)
    count_all = all_reduce_sum(count.to(torch.float64), group).clamp_min(1.0)  # rows with a positive
    return RankAlignRows(sums, count_all, vectors_all, entry_all)


def global_layer_losses(sums: Tensor, counts_all: Tensor, group: dist.ProcessGroup | None = None) -> Tensor:
    """Per-layer L_align averaged over micro-batches [L], no gradient (collective).

    sums [m, L]: this rank's row sums of each micro-batch; counts_all [m]: each micro-batch's global count.
    """
    per_micro = all_reduce_sum(sums, group)  # [m, L]
    return (per_micro / counts_all[:, None]).mean(dim=0)


# ---------------------------------------------------------------------------------- the step's objective
class PreAlignObjective:
    """L = L_LM + alpha * mean over micro-batches of L_align, on `dp_world_size` ranks (module docstring)."""

    def __init__(self, *, tau: float, alpha: float, impl: str, grad_accum: int, dp_world_size: int,
                 group: dist.ProcessGroup | None):
        self.tau, self.alpha, self.impl = tau, alpha, impl
        self.grad_accum, self.dp_world_size, self.group = grad_accum, dp_world_size, group

    def micro_loss(self, vectors: Tensor, entry_ids: Tensor, lm_sum: Tensor,
                   lm_tokens: float) -> tuple[Tensor, dict]:
        """(loss to back-propagate, stats) of one micro-batch (collective).

        vectors [L, n, H] and entry_ids [n]: this rank's words; lm_sum: the sum of their tokens' LM losses;
        lm_tokens: the number of LM loss tokens of the whole step over all ranks.
        """
        rows = rank_alignment_rows(vectors, entry_ids, tau=self.tau, impl=self.impl, group=self.group)
        # scaled so that DeepSpeed's 1/grad_accum and DP averaging give d(L_LM + alpha * L_align)/dθ
        ga, dp, alpha = self.grad_accum, self.dp_world_size, self.alpha
        loss = ga * dp * (lm_sum / lm_tokens + alpha * rows.share() / ga)
        stats = {
            "lm_sum": lm_sum.detach().double(),
            "align_sums": rows.sums.detach().double(),
            "align_count_all": rows.count_all.detach(),
            "pos_cos": positive_cosine(rows.vectors_all.detach(), rows.entry_all).double(),
        }
        return loss, stats

    def step_metrics(self, stats: list[dict], lm_tokens: float) -> dict:
        """Global values of the step for logging (collective: every rank calls it)."""
        lm = all_reduce_sum(torch.stack([s["lm_sum"] for s in stats]).sum(), self.group) / lm_tokens
        per_layer = global_layer_losses(torch.stack([s["align_sums"] for s in stats]),  # [ga, L]
                                        torch.stack([s["align_count_all"] for s in stats]), self.group)
        cos = torch.stack([s["pos_cos"] for s in stats]).mean(dim=0)
        align = per_layer.mean().item()
        return {
            "loss": lm.item() + self.alpha * align,
            "lm_loss": lm.item(),
            "align_loss": align,
            "align_loss_layers": [round(x, 6) for x in per_layer.tolist()],
            "pos_cos": cos.mean().item(),
            "pos_cos_layers": [round(x, 6) for x in cos.tolist()],
        }
