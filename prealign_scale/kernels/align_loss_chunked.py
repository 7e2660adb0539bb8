"""Blockwise forward and backward of the contrastive alignment loss in plain PyTorch (CPU path, fallback).

These functions work on already normalised vectors; :mod:`prealign_scale.kernels.align_loss` wraps them in
the autograd Function that also normalises and back-propagates through the normalisation. The math is in
docs/kernels.md. Notation: queries ``zq`` [L, n, H] are the rows (the local words), keys ``zk`` [L, N, H] are
all the columns (the gathered words); query row i is column ``row_offset + i`` of the keys.

Forward, per block of query rows I, streaming over blocks of key columns J (online log-sum-exp):

    S_IJ = zq_I · zk_Jᵀ / τ, self column set to −inf
    m    ← max(m, rowmax S_IJ);  Σ ← Σ·exp(m_old − m) + Σ_J exp(S_IJ − m)
    pos  ← pos + Σ_{j ∈ J, j positive} S_ij
    lse  = m + log Σ

Backward, with per-row coefficients c_i (upstream gradient of the row's layer, 0 for rows without a
positive) and c_i / |P(i)|:

    G_IJ = c_I · exp(S_IJ − lse_I) − [j ∈ P(i)] · c_I / |P(I)|      (self column: exp(−inf) = 0)
    dzq_I += G_IJ · zk_J / τ          dzk_J += G_IJᵀ · zq_I / τ

Memory: the inputs and gradients (O(L·N·H)) plus a few [L, block, block] tiles; never the N×N logits.
"""

from __future__ import annotations

import torch
from torch import Tensor

NEG_INF = float("-inf")


def _tile(
    q: Tensor, zk: Tensor, eq: Tensor, ek: Tensor, rows_global: Tensor, j0: int, j1: int, tau: float
) -> tuple[Tensor, Tensor]:
    """Logits of one tile with the self column at −inf, and its positive mask.

    q [L, b, H] are query rows whose own columns are ``rows_global`` [b]; the tile spans key columns
    j0..j1-1. Returns s [L, b, c] and pos_mask [b, c].
    """
    cols = torch.arange(j0, j1, device=q.device)
    not_self = rows_global[:, None] != cols[None, :]
    pos_mask = (eq[:, None] == ek[None, j0:j1]) & not_self
    s = torch.matmul(q, zk[:, j0:j1].transpose(1, 2)) / tau
    s = s.masked_fill(~not_self, NEG_INF)
    return s, pos_mask


def rows_forward_chunked(
    zq: Tensor, zk: Tensor, eq: Tensor, ek: Tensor, row_offset: int, tau: float, block_size: int
) -> tuple[Tensor, Tensor]:
    """(lse [L, n], pos_sum [L, n]): LSE over candidate columns and the sum of positive logits per row.

    A row without any candidate (N = 1) gets lse = −inf; the caller skips rows without positives.
    """
    L, n, _ = zq.shape
    N = zk.shape[1]
    lse = torch.empty(L, n, dtype=zq.dtype, device=zq.device)
    pos_sum = torch.empty(L, n, dtype=zq.dtype, device=zq.device)
    for i0 in range(0, n, block_size):
        i1 = min(i0 + block_size, n)
        q = zq[:, i0:i1]
        rows_global = torch.arange(i0 + row_offset, i1 + row_offset, device=zq.device)
        run_max = torch.full((L, i1 - i0), NEG_INF, dtype=zq.dtype, device=zq.device)
        run_sum = torch.zeros(L, i1 - i0, dtype=zq.dtype, device=zq.device)
        run_pos = torch.zeros(L, i1 - i0, dtype=zq.dtype, device=zq.device)
        for j0 in range(0, N, block_size):
            j1 = min(j0 + block_size, N)
            s, pos_mask = _tile(q, zk, eq[i0:i1], ek, rows_global, j0, j1, tau)
            run_pos += torch.where(pos_mask, s, torch.zeros_like(s)).sum(dim=-1)
            new_max = torch.maximum(run_max, s.amax(dim=-1))
            # A row whose columns so far are all −inf (only its own column seen): subtract 0, not −inf.
            ref = torch.where(torch.isinf(new_max), torch.zeros_like(new_max), new_max)
            run_sum = run_sum * torch.exp(run_max - ref) + torch.exp(s - ref[..., None]).sum(dim=-1)
            run_max = new_max
        ref = torch.where(torch.isinf(run_max), torch.zeros_like(run_max), run_max)
        lse[:, i0:i1] = ref + torch.log(run_sum)
        pos_sum[:, i0:i1] = run_pos
    return lse, pos_sum


def rows_backward_chunked(
    zq: Tensor,
    zk: Tensor,
    eq: Tensor,
    ek: Tensor,
    row_offset: int,
    tau: float,
    lse: Tensor,
    coef: Tensor,
    coef_pos: Tensor,
    block_size: int,
    shared: bool = False,
) -> tuple[Tensor, Tensor]:
    """(dzq [L, n, H], dzk [L, N, H]): gradients w.r.t. the normalised queries and keys.

    lse [L, n] must be +inf for rows that are skipped (so exp(S − lse) = 0 there); coef [L, n] is the
    weight of each row's loss (0 for skipped rows) and coef_pos = coef / |P(i)|. ``shared``: zq and zk are
    the same tensor; then one buffer receives both the row and the column gradients (returned twice).
    """
    n = zq.shape[1]
    N = zk.shape[1]
    dzq = torch.zeros_like(zq)
    dzk = dzq if shared else torch.zeros_like(zk)
    for i0 in range(0, n, block_size):
        i1 = min(i0 + block_size, n)
        q = zq[:, i0:i1]
        rows_global = torch.arange(i0 + row_offset, i1 + row_offset, device=zq.device)
        lse_i, c_i, cp_i = lse[:, i0:i1, None], coef[:, i0:i1, None], coef_pos[:, i0:i1, None]
        for j0 in range(0, N, block_size):
            j1 = min(j0 + block_size, N)
            s, pos_mask = _tile(q, zk, eq[i0:i1], ek, rows_global, j0, j1, tau)
            g = c_i * torch.exp(s - lse_i) - torch.where(pos_mask, cp_i, torch.zeros_like(cp_i))
            g = g / tau
            dzq[:, i0:i1] += torch.matmul(g, zk[:, j0:j1])
            dzk[:, j0:j1] += torch.matmul(g.transpose(1, 2), q)
    return dzq, dzk
