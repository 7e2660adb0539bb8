"""Triton kernels for the blockwise contrastive alignment loss (GPU path; CPU under TRITON_INTERPRET=1).

Same contract and math as :mod:`prealign_scale.kernels.align_loss_chunked` (see docs/kernels.md), in the
flash-attention layout:

- forward: one program per (layer, block of query rows); it streams over key-column blocks, computing each
  S tile as a K-loop of ``tl.dot`` over the hidden size, and keeps the online max, sum of exponentials and
  the sum of positive logits per row. Output: lse [L, n], pos_sum [L, n].
- backward dq: one program per (layer, block of query rows), streaming over column blocks; it recomputes S,
  forms G = c·exp(S − lse) − [positive]·c/|P|, and adds G·K into its own rows of dq, one H-tile at a time
  (read-modify-write of rows only this program owns: no atomics, any hidden size; a barrier after each
  column block orders the write and the next read across the program's threads).
- backward dk: one program per (layer, block of key columns), streaming over row blocks; it recomputes Sᵀ
  and adds Gᵀ·Q into its own rows of dk.

The queries arrive pre-scaled by 1/τ (so no float scalar is passed to a kernel: S = (zq/τ)·zkᵀ, and
dk = Gᵀ·(zq/τ) directly; dq = G·zk is divided by τ by the caller). Operands are bf16/fp16/fp32/fp64; every
accumulation uses ``ACC`` (a ``tl.constexpr``: fp32, or fp64 for fp64 inputs so that gradcheck works).

Import this module only when the kernel is needed: whether ``@triton.jit`` builds interpreted functions is
decided at import time by ``TRITON_INTERPRET``.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _logits_tile(
    q_ptr, k_ptr, rows, cols, row_ok, col_ok, H, stride_q, stride_k,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, ACC: tl.constexpr,
    PREC: tl.constexpr, DOT: tl.constexpr,
):
    """S[BLOCK_M, BLOCK_N] = Q[rows] · K[cols]ᵀ, accumulated in ACC over H in BLOCK_K slices."""
    s = tl.zeros([BLOCK_M, BLOCK_N], dtype=ACC)
    for k0 in range(0, H, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < H
        q = tl.load(q_ptr + rows[:, None] * stride_q + ks[None, :], mask=row_ok[:, None] & k_ok[None, :],
                    other=0.0)
        kt = tl.load(k_ptr + cols[None, :] * stride_k + ks[:, None], mask=k_ok[:, None] & col_ok[None, :],
                     other=0.0)
        s = tl.dot(q.to(DOT), kt.to(DOT), s, input_precision=PREC, out_dtype=ACC)
    return s


@triton.jit
def _align_fwd_kernel(
    Q, K, EQ, EK, LSE, POS, n, N, H, row_offset,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, ACC: tl.constexpr,
    PREC: tl.constexpr, DOT: tl.constexpr,
):
    layer = tl.program_id(0).to(tl.int64)
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n
    eq = tl.load(EQ + rows, mask=row_ok, other=0)
    self_col = rows + row_offset
    q_ptr = Q + layer * n * H
    k_ptr = K + layer * N * H

    run_max = tl.full([BLOCK_M], float("-inf"), ACC)
    run_sum = tl.zeros([BLOCK_M], dtype=ACC)
    run_pos = tl.zeros([BLOCK_M], dtype=ACC)
    for j0 in range(0, N, BLOCK_N):
        cols = j0 + tl.arange(0, BLOCK_N)
        col_ok = cols < N
        s = _logits_tile(q_ptr, k_ptr, rows, cols, row_ok, col_ok, H, H, H,
                         BLOCK_M, BLOCK_N, BLOCK_K, ACC, PREC, DOT)
        ek = tl.load(EK + cols, mask=col_ok, other=0)
        valid = row_ok[:, None] & col_ok[None, :] & (cols[None, :] != self_col[:, None])
        pos = valid & (ek[None, :] == eq[:, None])
        run_pos += tl.sum(tl.where(pos, s, 0.0), axis=1)
        s = tl.where(valid, s, float("-inf"))
        new_max = tl.maximum(run_max, tl.max(s, axis=1))
        ref = tl.where(new_max == float("-inf"), 0.0, new_max)  # nothing but −inf seen yet: subtract 0
        run_sum = run_sum * tl.exp(run_max - ref) + tl.sum(tl.exp(s - ref[:, None]), axis=1)
        run_max = new_max
    ref = tl.where(run_max == float("-inf"), 0.0, run_max)
    out = layer * n + rows
    tl.store(LSE + out, ref + tl.log(tl.where(row_ok, run_sum, 1.0)), mask=row_ok)
    tl.store(POS + out, run_pos, mask=row_ok)


@triton.jit
def _grad_tile(s, valid, pos, lse, coef, coef_pos):
    """G = c·exp(S − lse) − [positive]·c/|P| with invalid entries 0 (row-major: per-row stats on axis 0)."""
    p = tl.where(valid, tl.exp(s - lse[:, None]), 0.0)
    return coef[:, None] * p - tl.where(pos, coef_pos[:, None], 0.0)


@triton.jit
def _align_bwd_dq_kernel(
    Q, K, EQ, EK, LSE, COEF, COEFP, DQ, n, N, H, row_offset,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, ACC: tl.constexpr,
    PREC: tl.constexpr, DOT: tl.constexpr,
):
    layer = tl.program_id(0).to(tl.int64)
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n
    eq = tl.load(EQ + rows, mask=row_ok, other=0)
    self_col = rows + row_offset
    q_ptr = Q + layer * n * H
    k_ptr = K + layer * N * H
    dq_ptr = DQ + layer * n * H
    stat = layer * n + rows
    lse = tl.load(LSE + stat, mask=row_ok, other=float("inf"))
    coef = tl.load(COEF + stat, mask=row_ok, other=0.0)
    coef_pos = tl.load(COEFP + stat, mask=row_ok, other=0.0)
    for j0 in range(0, N, BLOCK_N):
        cols = j0 + tl.arange(0, BLOCK_N)
        col_ok = cols < N
        s = _logits_tile(q_ptr, k_ptr, rows, cols, row_ok, col_ok, H, H, H,
                         BLOCK_M, BLOCK_N, BLOCK_K, ACC, PREC, DOT)
        ek = tl.load(EK + cols, mask=col_ok, other=0)
        valid = row_ok[:, None] & col_ok[None, :] & (cols[None, :] != self_col[:, None])
        pos = valid & (ek[None, :] == eq[:, None])
        g = _grad_tile(s, valid, pos, lse, coef, coef_pos).to(DOT)
        for h0 in range(0, H, BLOCK_K):
            hs = h0 + tl.arange(0, BLOCK_K)
            h_ok = hs < H
            k = tl.load(k_ptr + cols[:, None] * H + hs[None, :], mask=col_ok[:, None] & h_ok[None, :],
                        other=0.0)
            acc_ptr = dq_ptr + rows[:, None] * H + hs[None, :]
            acc_mask = row_ok[:, None] & h_ok[None, :]
            acc = tl.load(acc_ptr, mask=acc_mask, other=0.0)
            acc = tl.dot(g, k.to(DOT), acc, input_precision=PREC, out_dtype=ACC)
            tl.store(acc_ptr, acc, mask=acc_mask)
        # The next column block reads these rows back, possibly from other threads of this program.
        tl.debug_barrier()


@triton.jit
def _align_bwd_dk_kernel(
    Q, K, EQ, EK, LSE, COEF, COEFP, DK, n, N, H, row_offset,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, ACC: tl.constexpr,
    PREC: tl.constexpr, DOT: tl.constexpr,
):
    # Transposed view: the program owns BLOCK_N key columns (axis 0 of its tiles) and streams over rows.
    layer = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    ek = tl.load(EK + cols, mask=col_ok, other=0)
    q_ptr = Q + layer * n * H
    k_ptr = K + layer * N * H
    dk_ptr = DK + layer * N * H
    for i0 in range(0, n, BLOCK_M):
        rows = i0 + tl.arange(0, BLOCK_M)
        row_ok = rows < n
        eq = tl.load(EQ + rows, mask=row_ok, other=0)
        stat = layer * n + rows
        lse = tl.load(LSE + stat, mask=row_ok, other=float("inf"))
        coef = tl.load(COEF + stat, mask=row_ok, other=0.0)
        coef_pos = tl.load(COEFP + stat, mask=row_ok, other=0.0)
        s = _logits_tile(q_ptr, k_ptr, rows, cols, row_ok, col_ok, H, H, H,
                         BLOCK_M, BLOCK_N, BLOCK_K, ACC, PREC, DOT)
        valid = row_ok[:, None] & col_ok[None, :] & (cols[None, :] != (rows + row_offset)[:, None])
        pos = valid & (ek[None, :] == eq[:, None])
        gt = tl.trans(_grad_tile(s, valid, pos, lse, coef, coef_pos)).to(DOT)  # [BN, BM]
        for h0 in range(0, H, BLOCK_K):
            hs = h0 + tl.arange(0, BLOCK_K)
            h_ok = hs < H
            q = tl.load(q_ptr + rows[:, None] * H + hs[None, :], mask=row_ok[:, None] & h_ok[None, :],
                        other=0.0)
            acc_ptr = dk_ptr + cols[:, None] * H + hs[None, :]
            acc_mask = col_ok[:, None] & h_ok[None, :]
            acc = tl.load(acc_ptr, mask=acc_mask, other=0.0)
            acc = tl.dot(gt, q.to(DOT), acc, input_precision=PREC, out_dtype=ACC)
            tl.store(acc_ptr, acc, mask=acc_mask)
        tl.debug_barrier()  # as in the dq kernel: the next row block reads these rows back


_TL_DTYPE = {torch.float32: tl.float32, torch.float64: tl.float64, torch.float16: tl.float16,
             torch.bfloat16: tl.bfloat16}


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _launch_params(zq: Tensor, block_size: int) -> tuple[dict, torch.dtype]:
    if block_size < 16 or block_size & (block_size - 1):
        raise ValueError(
            f"prealign_scale/kernels/align_loss_triton.py: block_size must be a power of two >= 16 "
            f"(tl.dot tiles), got {block_size}"
        )
    H = zq.shape[2]
    acc = torch.float64 if zq.dtype == torch.float64 else torch.float32
    return {
        "BLOCK_M": block_size,
        "BLOCK_N": block_size,
        "BLOCK_K": max(16, min(64, triton.next_power_of_2(H))),
        "ACC": _TL_DTYPE[acc],
        # fp32/fp64 operands: exact products (no tf32); bf16/fp16 operands ignore the setting.
        "PREC": "ieee",
        # tl.dot operand dtype: the input dtype (bf16/fp16 tensor cores on GPU). Interpreter accommodation:
        # triton 3.9's interpreter multiplies the raw bits of bf16 operands (results ~1e10), so under
        # TRITON_INTERPRET=1 bf16 tiles are up-cast to fp32 after loading (values stay bf16-rounded).
        "DOT": tl.float32 if (zq.dtype == torch.bfloat16 and _interpreted()) else _TL_DTYPE[zq.dtype],
    }, acc


def rows_forward_triton(
    zq_scaled: Tensor, zk: Tensor, eq: Tensor, ek: Tensor, row_offset: int, block_size: int
) -> tuple[Tensor, Tensor]:
    """(lse [L, n], pos_sum [L, n]) in the accumulator dtype. zq_scaled = zq / τ; all contiguous."""
    L, n, H = zq_scaled.shape
    N = zk.shape[1]
    params, acc = _launch_params(zq_scaled, block_size)
    lse = torch.empty(L, n, dtype=acc, device=zq_scaled.device)
    pos = torch.empty(L, n, dtype=acc, device=zq_scaled.device)
    grid = (L, triton.cdiv(n, block_size))
    _align_fwd_kernel[grid](zq_scaled, zk, eq, ek, lse, pos, n, N, H, row_offset, **params)
    return lse, pos


def rows_backward_triton(
    zq_scaled: Tensor,
    zk: Tensor,
    eq: Tensor,
    ek: Tensor,
    row_offset: int,
    lse: Tensor,
    coef: Tensor,
    coef_pos: Tensor,
    block_size: int,
) -> tuple[Tensor, Tensor]:
    """(G·zk [L, n, H], Gᵀ·(zq/τ) [L, N, H]) in the accumulator dtype; see the module docstring."""
    L, n, H = zq_scaled.shape
    N = zk.shape[1]
    params, acc = _launch_params(zq_scaled, block_size)
    dq = torch.zeros(L, n, H, dtype=acc, device=zq_scaled.device)
    dk = torch.zeros(L, N, H, dtype=acc, device=zq_scaled.device)
    stats = (lse.to(acc).contiguous(), coef.to(acc).contiguous(), coef_pos.to(acc).contiguous())
    _align_bwd_dq_kernel[(L, triton.cdiv(n, block_size))](
        zq_scaled, zk, eq, ek, *stats, dq, n, N, H, row_offset, **params
    )
    _align_bwd_dk_kernel[(L, triton.cdiv(N, block_size))](
        zq_scaled, zk, eq, ek, *stats, dk, n, N, H, row_offset, **params
    )
    return dq, dk
