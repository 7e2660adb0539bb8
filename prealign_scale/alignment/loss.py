"""The contrastive alignment loss of PreAlign stage 1: the plain reference and the implementation dispatch.

METHOD.md §2. For one "layer" ℓ (embedding output, each block's output, the final normed state, the
unembedding rows) and the word vectors r_1..r_N of the *global* batch:

    z_i  = r_i / ‖r_i‖
    s_ij = z_i · z_j / τ
    P(i) = { j ≠ i : entry(j) = entry(i) }                    (positives: the other words of i's entry)
    ℓ_i  = −(1/|P(i)|) Σ_{p ∈ P(i)} log( exp(s_ip) / Σ_{j ≠ i} exp(s_ij) )
         = LSE_{j ≠ i}(s_ij) − (1/|P(i)|) Σ_{p ∈ P(i)} s_ip
    L_ℓ  = mean of ℓ_i over the rows with P(i) ≠ ∅          (rows without a positive are skipped)
    L    = mean over layers of L_ℓ

Everything is computed in fp32 (fp64 stays fp64), with a row-wise max subtraction inside the log-sum-exp,
and the row's own column is excluded by setting it to −inf (never by multiplying a logit by 0, which still
leaves exp(0) = 1 in the denominator: the defect of the authors' release, see METHOD.md §6).

The reference, :func:`contrastive_alignment_loss` / :func:`contrastive_alignment_loss_rows`, materialises
the L×N×N logits: it is the oracle, and the "naive" implementation for small N. The callers use the
dispatch, which gives the same numbers from one of several implementations:

    alignment_loss(vectors [L, N, H], entry_ids [N], *, tau, impl="auto") -> (mean [], per_layer [L])
    alignment_loss_rows(vectors_local [L, n, H], vectors_all [L, N, H], entry_local [n], entry_all [N],
                        row_offset, *, tau, impl="auto") -> (sums [L], count [])

``impl`` (:data:`IMPLS`):

- ``"naive"``: the reference of this module.
- ``"chunked"``: blockwise PyTorch with an online log-sum-exp; O(L·N·H) memory plus [L, block, block] tiles.
- ``"triton"``: the same blockwise algorithm as Triton kernels (CUDA tensors; CPU tensors only under
  ``TRITON_INTERPRET=1``, for tests).
- ``"auto"``: triton on CUDA tensors, chunked elsewhere.

The blockwise implementations live in :mod:`prealign_scale.kernels.align_loss` (docs/kernels.md). ``tau`` has
no default here: its one default is ``AlignConfig.tau`` in :mod:`prealign_scale.config`.

Distributed use. The rows of the loss are independent given all columns, so each data-parallel rank can
compute the rows of its own words against the gathered global batch: the rows form returns the per-layer
*sum* of row losses and the number of rows with a positive; summing both over ranks and dividing gives
exactly the single-process loss. :mod:`prealign_scale.alignment.objective` does this for the engine.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from prealign_scale.kernels.align_loss import alignment_loss_rows_blockwise

NORM_EPS = 1e-12  # as F.normalize: a zero vector normalises to zero instead of NaN (kernels keep a copy)
IMPLS = ("naive", "chunked", "triton", "auto")
_WHERE = "prealign_scale/alignment/loss.py"


def _compute_dtype(t: Tensor) -> torch.dtype:
    """fp64 stays fp64 (gradcheck); everything else is computed in fp32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def normalize_rows(vectors: Tensor) -> Tensor:
    """z = r / max(‖r‖, eps) over the last dimension, in the compute dtype."""
    v = vectors.to(_compute_dtype(vectors))
    return v / v.norm(dim=-1, keepdim=True).clamp_min(NORM_EPS)


def check_rows_inputs(
    vectors_local: Tensor,
    vectors_all: Tensor,
    entry_local: Tensor,
    entry_all: Tensor,
    row_offset: int,
    tau: float,
) -> None:
    """Validate the arguments of a rows loss; raise ValueError naming the argument that is wrong."""
    where = _WHERE
    if vectors_all.dim() != 3:
        raise ValueError(f"{where}: vectors_all must be [L, N, H], got shape {tuple(vectors_all.shape)}")
    if vectors_local.dim() != 3:
        raise ValueError(f"{where}: vectors_local must be [L, n, H], got shape {tuple(vectors_local.shape)}")
    L, N, H = vectors_all.shape
    Lq, n, Hq = vectors_local.shape
    if (Lq, Hq) != (L, H):
        raise ValueError(
            f"{where}: vectors_local {tuple(vectors_local.shape)} and vectors_all {tuple(vectors_all.shape)} "
            "must agree in layers (dim 0) and hidden size (dim 2)"
        )
    if not vectors_all.is_floating_point() or vectors_local.dtype != vectors_all.dtype:
        raise ValueError(
            f"{where}: vectors must be floating point of one dtype, got {vectors_local.dtype} "
            f"(local) and {vectors_all.dtype} (all)"
        )
    for name, ids, size in (("entry_local", entry_local, n), ("entry_all", entry_all, N)):
        if ids.dtype != torch.int64 or ids.dim() != 1 or ids.numel() != size:
            raise ValueError(
                f"{where}: {name} must be int64 of shape [{size}], got {ids.dtype} {tuple(ids.shape)}"
            )
    if not (isinstance(row_offset, int) and 0 <= row_offset and row_offset + n <= N):
        raise ValueError(f"{where}: row_offset={row_offset!r} must be an int with 0 <= row_offset <= N - n "
                         f"= {N - n}")
    if not (tau > 0):
        raise ValueError(f"{where}: tau must be > 0, got {tau!r}")
    if n > 0 and not torch.equal(entry_local, entry_all[row_offset : row_offset + n]):
        raise ValueError(
            f"{where}: entry_local must equal entry_all[row_offset : row_offset + n] (the local rows are a "
            "slice of the gathered batch)"
        )


def contrastive_alignment_loss_rows(
    vectors_local: Tensor,
    vectors_all: Tensor,
    entry_local: Tensor,
    entry_all: Tensor,
    row_offset: int,
    *,
    tau: float,
) -> tuple[Tensor, Tensor]:
    """Loss rows of the local words against all (gathered) words: (sums [L], count []).

    vectors_local [L, n, H] are the rows ``row_offset .. row_offset+n-1`` of vectors_all [L, N, H] (the same
    values; in distributed use the local tensor and the all-gathered one). Row i of the local slice excludes
    column ``row_offset + i`` (itself) and takes as positives the other columns with its entry id.

    Returns ``sums[ℓ] = Σ_i ℓ_i`` over the local rows with a positive, in the compute dtype, and
    ``count`` = how many local rows have a positive (int64, 0-dim). The full loss of layer ℓ is
    ``Σ_ranks sums[ℓ] / Σ_ranks count``.
    """
    check_rows_inputs(vectors_local, vectors_all, entry_local, entry_all, row_offset, tau)
    n = vectors_local.shape[1]
    N = vectors_all.shape[1]
    zq, zk = normalize_rows(vectors_local), normalize_rows(vectors_all)

    logits = torch.einsum("lih,ljh->lij", zq, zk) / tau  # [L, n, N]
    rows = torch.arange(n, device=logits.device)
    self_mask = torch.zeros(n, N, dtype=torch.bool, device=logits.device)
    self_mask[rows, rows + row_offset] = True
    pos_mask = (entry_local[:, None] == entry_all[None, :]) & ~self_mask  # [n, N]

    # Self excluded by −inf; row-wise max subtraction (the max over the candidate columns of each row).
    logits = logits.masked_fill(self_mask, float("-inf"))
    row_max = logits.amax(dim=-1, keepdim=True).detach()
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))  # N = 1: no candidate
    lse = row_max + torch.log(torch.exp(logits - row_max).sum(dim=-1, keepdim=True))  # [L, n, 1]
    log_prob = logits - lse  # −inf on the self column; never selected below

    npos = pos_mask.sum(dim=-1)  # [n]
    has_pos = npos > 0
    pos_log_prob = torch.where(pos_mask, log_prob, torch.zeros_like(log_prob)).sum(dim=-1)  # [L, n]
    row_loss = -pos_log_prob / npos.clamp_min(1)
    row_loss = torch.where(has_pos, row_loss, torch.zeros_like(row_loss))
    return row_loss.sum(dim=-1), has_pos.sum()


def contrastive_alignment_loss(vectors: Tensor, entry_ids: Tensor, *, tau: float) -> tuple[Tensor, Tensor]:
    """METHOD.md §2 over all layers: (mean over layers [], per-layer losses [L]), in the compute dtype.

    vectors [L, N, H]: the word vectors of every layer (any float dtype; computed in fp32, fp64 stays fp64).
    entry_ids [N] int64: the dictionary entry of each word; words of one entry are each other's positives.
    Raises ValueError when no row has a positive (the loss would be a mean over nothing).
    """
    sums, count = contrastive_alignment_loss_rows(vectors, vectors, entry_ids, entry_ids, 0, tau=tau)
    if int(count) == 0:
        raise ValueError(
            f"{_WHERE}: entry_ids: no word has a positive (every entry id occurs once); "
            "the alignment loss needs at least two words of one entry in the batch"
        )
    per_layer = sums / count
    return per_layer.mean(), per_layer


@torch.no_grad()
def positive_cosine(vectors: Tensor, entry_ids: Tensor) -> Tensor:
    """Mean cosine of the positive pairs (i ≠ j, same entry) per layer, for logging: [L], no gradient.

    O(L·N·H): with E_e = Σ_{k ∈ e} z_k, the sum of z_i·z_j over ordered pairs of entry e is
    ‖E_e‖² − Σ_{k ∈ e} ‖z_k‖², and there are c_e(c_e − 1) such pairs. NaN when there is no pair.
    """
    if vectors.dim() != 3 or entry_ids.dim() != 1 or entry_ids.numel() != vectors.shape[1]:
        raise ValueError(
            f"{_WHERE}: positive_cosine needs vectors [L, N, H] and entry_ids [N], got "
            f"{tuple(vectors.shape)} and {tuple(entry_ids.shape)}"
        )
    z = normalize_rows(vectors)
    _, group, counts = torch.unique(entry_ids, return_inverse=True, return_counts=True)
    sums = torch.zeros(z.shape[0], counts.numel(), z.shape[2], dtype=z.dtype, device=z.device)
    sums.index_add_(1, group, z)
    pair_dot = (sums * sums).sum(dim=(1, 2)) - (z * z).sum(dim=(1, 2))  # [L]
    pairs = (counts * (counts - 1)).sum().to(z.dtype)
    return pair_dot / pairs


# ------------------------------------------------------------------------------------- the dispatch
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


def alignment_loss_rows(
    vectors_local: Tensor,
    vectors_all: Tensor,
    entry_local: Tensor,
    entry_all: Tensor,
    row_offset: int,
    *,
    tau: float,
    impl: str = "auto",
    block_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """(sums [L], count []): per-layer sums of the loss rows of the local words, and how many have a positive.

    Same contract as :func:`contrastive_alignment_loss_rows`, computed by ``impl``. Gradients reach both
    ``vectors_local`` (the row side) and ``vectors_all`` (the column side); when they are the same tensor
    autograd adds them. ``block_size`` (blockwise impls only) defaults per impl (chunked 512, triton 64).
    """
    check_rows_inputs(vectors_local, vectors_all, entry_local, entry_all, row_offset, tau)
    impl = resolve_impl(impl, vectors_all.device)
    if impl == "naive":
        return contrastive_alignment_loss_rows(vectors_local, vectors_all, entry_local, entry_all, row_offset,
                                               tau=tau)
    return alignment_loss_rows_blockwise(vectors_local, vectors_all, entry_local, entry_all, row_offset,
                                         tau=float(tau), impl=impl, block_size=block_size)


def alignment_loss(
    vectors: Tensor,
    entry_ids: Tensor,
    *,
    tau: float,
    impl: str = "auto",
    block_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """(mean over layers [], per-layer losses [L]) of METHOD.md §2 for one (global) batch of word vectors.

    Raises ValueError when no word has a positive.
    """
    sums, count = alignment_loss_rows(vectors, vectors, entry_ids, entry_ids, 0, tau=tau, impl=impl,
                                      block_size=block_size)
    if int(count) == 0:
        raise ValueError(
            f"{_WHERE}: entry_ids: no word has a positive (every entry id occurs once); the alignment loss "
            "needs at least two words of one entry in the batch"
        )
    per_layer = sums / count
    return per_layer.mean(), per_layer
