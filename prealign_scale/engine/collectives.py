"""Collectives the phases need: an all-gather that carries gradients, and scalar sums over a group.

`gather_rows_with_grad` concatenates every rank's rows along dim 1 (ranks hold different row counts: the
number of dictionary words per rank varies), padding to the largest count for the collective. Its backward
hands each rank the sum, over all ranks, of the gradients flowing into its rows, which is exactly what the
contrastive loss needs: rank r's loss uses every rank's vectors as negatives, so rank r' must receive the
gradients of every rank's loss with respect to its own vectors. On NCCL the backward is a reduce-scatter;
gloo has none, so there it is an all-reduce of the padded gradient followed by taking this rank's slice.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


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


def all_reduce_sum(t: Tensor, group: dist.ProcessGroup | None = None) -> Tensor:
    """Sum of `t` over the group (a new tensor; `t` is not modified)."""
    out = t.detach().clone()
    dist.all_reduce(out, group=group)
    return out
