"""The contrastive alignment loss behind one API: naive reference, chunked PyTorch, or Triton.

    alignment_loss(vectors [L, N, H], entry_ids [N], tau=0.1, impl="auto") -> (mean [], per_layer [L])
    alignment_loss_rows(vectors_local [L, n, H], vectors_all [L, N, H], entry_local [n], entry_all [N],
                        row_offset, tau=0.1, impl="auto") -> (sums [L], count [])

Both return the METHOD.md §2 loss exactly as :mod:`prealign_scale.alignment.loss` defines it (that module is
the "naive" implementation). ``impl``:

- ``"naive"``: the reference; materialises the L×N×N logits (small N only).
- ``"chunked"``: blockwise PyTorch with an online log-sum-exp; O(L·N·H) memory plus [L, block, block] tiles.
- ``"triton"``: the same blockwise algorithm as Triton kernels (CUDA tensors; CPU tensors only under
  ``TRITON_INTERPRET=1``, for tests).
- ``"auto"``: triton on CUDA tensors, chunked elsewhere.

The chunked and Triton paths share one autograd Function: it normalises the vectors itself (fp32, fp64 for
fp64 inputs), runs the blockwise forward, and in backward recomputes the logits tile by tile and
back-propagates through z = r/‖r‖ by hand, returning gradients w.r.t. the *unnormalised* vectors in their
input dtype. Distributed use (each rank's rows against the all-gathered batch) is described in
docs/kernels.md.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from prealign_scale.alignment.loss import (
    NORM_EPS,
    check_rows_inputs,
    contrastive_alignment_loss_rows,
)
from prealign_scale.kernels.align_loss_chunked import rows_backward_chunked, rows_forward_chunked

IMPLS = ("naive", "chunked", "triton", "auto")
DEFAULT_BLOCK = {"chunked": 512, "triton": 64}
_WHERE = "prealign_scale/kernels/align_loss.py"


def resolve_impl(impl: str, device: torch.device) -> str:
    """Map ``impl`` (one of IMPLS) to a concrete implementation for tensors on ``device``."""
    if impl not in IMPLS:
        raise ValueError(f"{_WHERE}: impl must be one of {IMPLS}, got {impl!r}")
    if impl == "auto":
        return "triton" if device.type == "cuda" else "chunked"
    if impl == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(
            f"{_WHERE}: impl='triton' needs CUDA tensors (got {device}); on CPU set TRITON_INTERPRET=1 before "
            "triton is imported (tests only), or use impl='chunked'"
        )
    return impl


def positive_counts(entry_local: Tensor, entry_all: Tensor) -> Tensor:
    """|P(i)| per local row: columns of entry_all with the row's entry id, minus the row itself. [n] int64.

    Sort-based, O(N log N) time and O(N) memory (no n×N comparison matrix).
    """
    sorted_all = torch.sort(entry_all).values
    upper = torch.searchsorted(sorted_all, entry_local, right=True)
    lower = torch.searchsorted(sorted_all, entry_local, right=False)
    return upper - lower - 1


def _normalize_with_norm(r: Tensor) -> tuple[Tensor, Tensor]:
    """(z, clamped norm) in the compute dtype; z = r / max(‖r‖, eps) as in alignment.loss."""
    v = r.to(torch.float64 if r.dtype == torch.float64 else torch.float32)
    norm = v.norm(dim=-1, keepdim=True).clamp_min(NORM_EPS)
    return v / norm, norm


def _normalize_backward_(z: Tensor, norm: Tensor, dz: Tensor) -> Tensor:
    """dL/dr for z = r / max(‖r‖, eps), computed in place in dz: (dz − z (z·dz)) / ‖r‖, or dz / eps where
    the clamp is active (there z = r / eps is linear in r)."""
    dot = torch.matmul(z.unsqueeze(-2), dz.unsqueeze(-1)).squeeze(-1)  # [..., 1], no [L, N, H] temporary
    dot = torch.where(norm > NORM_EPS, dot, torch.zeros_like(dot))
    return dz.addcmul_(z, dot, value=-1.0).div_(norm)


class _BlockwiseAlignRows(torch.autograd.Function):
    """Per-layer sums of the row losses of the local rows, blockwise; see the module docstring.

    ``shared=True`` means vectors_local and vectors_all are the same tensor (the single-process loss): the
    normalised copy and the gradient buffer are then shared, and the whole gradient is returned once.
    """

    @staticmethod
    def forward(ctx, vectors_local, vectors_all, entry_local, entry_all, row_offset, tau, impl, block_size,
                shared):
        zq, _ = _normalize_with_norm(vectors_local)
        zk = zq if shared else _normalize_with_norm(vectors_all)[0]
        npos = positive_counts(entry_local, entry_all)
        active = npos > 0
        if impl == "chunked":
            lse, pos_sum = rows_forward_chunked(zq, zk, entry_local, entry_all, row_offset, tau, block_size)
        else:
            from prealign_scale.kernels.align_loss_triton import rows_forward_triton

            op = vectors_all.dtype  # bf16/fp16 operands for the tensor cores, fp32 accumulation
            zq_s = (zq / tau).to(op).contiguous()
            lse, pos_sum = rows_forward_triton(zq_s, zk.to(op).contiguous(), entry_local.contiguous(),
                                               entry_all.contiguous(), row_offset, block_size)
            lse, pos_sum = lse.to(zq.dtype), pos_sum.to(zq.dtype)
        row_loss = lse - pos_sum / npos.clamp_min(1).to(zq.dtype)
        row_loss = torch.where(active, row_loss, torch.zeros_like(row_loss))
        count = active.sum()
        ctx.save_for_backward(vectors_local, vectors_all, entry_local, entry_all, lse, npos)
        ctx.args = (row_offset, tau, impl, block_size, shared)
        ctx.mark_non_differentiable(count)
        return row_loss.sum(dim=-1), count

    @staticmethod
    def backward(ctx, grad_sums, _grad_count):
        vectors_local, vectors_all, entry_local, entry_all, lse, npos = ctx.saved_tensors
        row_offset, tau, impl, block_size, shared = ctx.args
        zq, norm_q = _normalize_with_norm(vectors_local)
        zk, norm_k = (zq, norm_q) if shared else _normalize_with_norm(vectors_all)
        active = npos > 0
        # Per-row coefficients: 1 for rows with a positive, 0 for skipped rows (with lse = +inf there, so
        # exp(S − lse) = 0 and nothing reaches them). The upstream gradient of each layer multiplies the
        # result afterwards: the G tiles then stay in [−1, 1], safe to round to fp16/bf16 for tl.dot.
        coef = active.to(zq.dtype)[None, :].expand(lse.shape[0], -1).contiguous()
        coef_pos = coef / npos.clamp_min(1).to(zq.dtype)
        lse = torch.where(active, lse, torch.full_like(lse, float("inf")))
        if impl == "chunked":
            dzq, dzk = rows_backward_chunked(zq, zk, entry_local, entry_all, row_offset, tau, lse, coef,
                                             coef_pos, block_size, shared=shared)
        else:
            from prealign_scale.kernels.align_loss_triton import rows_backward_triton

            op = vectors_all.dtype
            g_zk, dzk = rows_backward_triton((zq / tau).to(op).contiguous(), zk.to(op).contiguous(),
                                             entry_local.contiguous(), entry_all.contiguous(), row_offset,
                                             lse, coef, coef_pos, block_size)
            dzq, dzk = g_zk.to(zq.dtype).div_(tau), dzk.to(zq.dtype)
            if shared:
                dzq.add_(dzk)
                dzk = dzq
        layer_grad = grad_sums.to(zq.dtype)[:, None, None]
        grad_local = _normalize_backward_(zq, norm_q, dzq.mul_(layer_grad)).to(vectors_local.dtype)
        if shared:  # the same tensor: its whole gradient is returned once
            return grad_local, None, None, None, None, None, None, None, None
        grad_all = _normalize_backward_(zk, norm_k, dzk.mul_(layer_grad)).to(vectors_all.dtype)
        return grad_local, grad_all, None, None, None, None, None, None, None


def alignment_loss_rows(
    vectors_local: Tensor,
    vectors_all: Tensor,
    entry_local: Tensor,
    entry_all: Tensor,
    row_offset: int,
    tau: float = 0.1,
    impl: str = "auto",
    block_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """(sums [L], count []): per-layer sums of the loss rows of the local words, and how many have a positive.

    Same contract as :func:`prealign_scale.alignment.loss.contrastive_alignment_loss_rows`. Gradients
    reach both ``vectors_local`` (the row side) and ``vectors_all`` (the column side); when they are the
    same tensor autograd adds them. ``block_size`` defaults per impl (chunked 512, triton 64).
    """
    check_rows_inputs(vectors_local, vectors_all, entry_local, entry_all, row_offset, tau)
    impl = resolve_impl(impl, vectors_all.device)
    if impl == "naive":
        return contrastive_alignment_loss_rows(vectors_local, vectors_all, entry_local, entry_all, row_offset,
                                               tau)
    block = DEFAULT_BLOCK[impl] if block_size is None else int(block_size)
    if block < 1:
        raise ValueError(f"{_WHERE}: block_size must be >= 1, got {block_size!r}")
    shared = vectors_local is vectors_all and row_offset == 0
    return _BlockwiseAlignRows.apply(vectors_local, vectors_all, entry_local, entry_all, row_offset,
                                     float(tau), impl, block, shared)


def alignment_loss(
    vectors: Tensor,
    entry_ids: Tensor,
    tau: float = 0.1,
    impl: str = "auto",
    block_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """(mean over layers [], per-layer losses [L]) of METHOD.md §2 for one (global) batch of word vectors.

    Raises ValueError when no word has a positive.
    """
    sums, count = alignment_loss_rows(vectors, vectors, entry_ids, entry_ids, 0, tau, impl, block_size)
    if int(count) == 0:
        raise ValueError(
            f"{_WHERE}: entry_ids: no word has a positive (every entry id occurs once); the alignment loss "
            "needs at least two words of one entry in the batch"
        )
    per_layer = sums / count
    return per_layer.mean(), per_layer


def distributed_alignment_loss(
    vectors_local: Tensor,
    entry_local: Tensor,
    tau: float = 0.1,
    impl: str = "auto",
    block_size: int | None = None,
    group=None,
) -> tuple[Tensor, Tensor, Tensor]:
    """The global-batch loss under data parallelism: (share [], global_mean [], global_per_layer [L]).

    Every rank passes its own word vectors [L, n_rank, H] (n may differ between ranks) and entry ids. The
    vectors are all-gathered *with gradient* (``torch.distributed.nn.functional.all_gather``, whose backward
    sums the gradients of all ranks into each rank's slice), the entry ids and the row counts without; the
    rank computes the loss rows of its own words against all words, and the count of rows with a positive
    is all-reduced. ``share`` = mean over layers of (local row sums / global count): the shares of all
    ranks add up to the single-process loss, and so do their gradients. ``global_mean`` and
    ``global_per_layer`` are the all-reduced loss values, detached, for logging.

    Gradient reduction: if the optimizer averages gradients over ranks (DeepSpeed, DDP), back-propagate
    ``share * world_size`` to get the gradient of the global loss (docs/kernels.md).
    """
    import torch.distributed as dist
    from torch.distributed.nn.functional import all_gather

    world = dist.get_world_size(group)
    rank = dist.get_rank(group)
    n = vectors_local.shape[1]
    device = vectors_local.device
    size = torch.tensor([n], dtype=torch.int64, device=device)
    sizes_t = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes_t, size, group=group)
    sizes = [int(t) for t in sizes_t]
    pad = max(sizes) - n
    # all_gather needs equal shapes: pad to the largest rank, gather, then drop the padding.
    padded = torch.nn.functional.pad(vectors_local, (0, 0, 0, pad))
    gathered = all_gather(padded, group=group)
    vectors_all = torch.cat([g[:, :k] for g, k in zip(gathered, sizes)], dim=1)
    ids = torch.nn.functional.pad(entry_local, (0, pad), value=-1)
    ids_t = [torch.empty_like(ids) for _ in range(world)]
    dist.all_gather(ids_t, ids, group=group)
    entry_all = torch.cat([t[:k] for t, k in zip(ids_t, sizes)])
    row_offset = sum(sizes[:rank])

    sums, count = alignment_loss_rows(vectors_local, vectors_all, entry_local, entry_all, row_offset, tau,
                                      impl, block_size)
    total = count.detach().clone()
    dist.all_reduce(total, group=group)
    if int(total) == 0:
        raise ValueError(
            f"{_WHERE}: entry ids: no word of the global batch has a positive; the alignment loss needs at "
            "least two words of one entry"
        )
    share = (sums / total).mean()
    global_sums = sums.detach().clone()
    dist.all_reduce(global_sums, group=group)
    per_layer = global_sums / total
    return share, per_layer.mean(), per_layer


__all__ = ["IMPLS", "alignment_loss", "alignment_loss_rows", "distributed_alignment_loss", "positive_counts",
           "resolve_impl"]
