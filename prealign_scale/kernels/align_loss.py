"""The blockwise contrastive alignment loss (chunked PyTorch or Triton) as one autograd Function.

    alignment_loss_rows_blockwise(vectors_local [L, n, H], vectors_all [L, N, H], entry_local [n],
                                  entry_all [N], row_offset, *, tau, impl, block_size=None)
        -> (sums [L], count [])

The same numbers as the reference rows loss of :mod:`prealign_scale.alignment.loss` (METHOD.md §2), without
the L×N×N logits. Callers go through that module's dispatch (``alignment_loss``, ``alignment_loss_rows``),
which validates the inputs and picks ``impl``; this module takes ``impl`` in ``{"chunked", "triton"}``:

- ``"chunked"``: blockwise PyTorch with an online log-sum-exp (:mod:`.align_loss_chunked`).
- ``"triton"``: the same algorithm as Triton kernels (:mod:`.align_loss_triton`, imported on first use).

The autograd Function normalises the vectors itself (fp32, fp64 for fp64 inputs), runs the blockwise forward,
and in backward recomputes the logits tile by tile and back-propagates through z = r/‖r‖ by hand, returning
gradients w.r.t. the *unnormalised* vectors in their input dtype. The math is in docs/kernels.md.

Part of the kernels leaf: it imports nothing of prealign_scale outside kernels/.
"""

from __future__ import annotations

import torch
from torch import Tensor

from prealign_scale.kernels.align_loss_chunked import rows_backward_chunked, rows_forward_chunked

NORM_EPS = 1e-12  # as F.normalize and alignment.loss.NORM_EPS (a test checks they agree)
DEFAULT_BLOCK = {"chunked": 512, "triton": 64}
_WHERE = "prealign_scale/kernels/align_loss.py"


def positive_counts(entry_local: Tensor, entry_all: Tensor) -> Tensor:
    """|P(i)| per local row: columns of entry_all with the row's entry id, minus the row itself. [n] int64.

    Sort-based, O(N log N) time and O(N) memory (no n×N comparison matrix).
    """
    sorted_all = torch.sort(entry_all).values
    upper = torch.searchsorted(sorted_all, entry_local, right=True)
    lower = torch.searchsorted(sorted_all, entry_local, right=False)
    return upper - lower - 1


def _normalize_with_norm(r: Tensor) -> tuple[Tensor, Tensor]:
    """(z, clamped norm) in the compute dtype; z = r / max(‖r‖, eps) (alignment.loss.normalize_rows)."""
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


def alignment_loss_rows_blockwise(
    vectors_local: Tensor,
    vectors_all: Tensor,
    entry_local: Tensor,
    entry_all: Tensor,
    row_offset: int,
    *,
    tau: float,
    impl: str,
    block_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """(sums [L], count []): per-layer sums of the loss rows of the local words, and how many have a positive.

    The contract of ``prealign_scale.alignment.loss.alignment_loss_rows`` (which checks the inputs before
    calling this). ``impl`` is "chunked" or "triton"; ``block_size`` defaults per impl (chunked 512,
    triton 64).
    """
    if impl not in DEFAULT_BLOCK:
        raise ValueError(f"{_WHERE}: impl must be one of {tuple(DEFAULT_BLOCK)}, got {impl!r}")
    block = DEFAULT_BLOCK[impl] if block_size is None else int(block_size)
    if block < 1:
        raise ValueError(f"{_WHERE}: block_size must be >= 1, got {block_size!r}")
    shared = vectors_local is vectors_all and row_offset == 0
    return _BlockwiseAlignRows.apply(vectors_local, vectors_all, entry_local, entry_all, row_offset,
                                     float(tau), impl, block, shared)


__all__ = ["DEFAULT_BLOCK", "alignment_loss_rows_blockwise", "positive_counts"]
