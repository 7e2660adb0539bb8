"""Fused linear cross-entropy for the LM head: the loss of ``hidden @ weightᵀ`` without the full logits.

    fused_linear_cross_entropy(hidden [T, H], weight [V, H], targets [T], reduction="sum") -> loss []

``targets`` are the stored next-token targets (METHOD.md §3), ``-100`` = ignore. With ``reduction="sum"``
the result is the sum of the token losses over non-ignored tokens: the engine divides by its own *global*
count of loss tokens (summed over data-parallel ranks and accumulation steps), so that the normalisation is
exactly that of the plain path ``F.cross_entropy(logits, targets, ignore_index=-100, reduction="sum")``.

Implementations (``impl``):

- ``"chunked"``: PyTorch, a custom autograd Function. Tokens are processed ``chunk_size`` at a time; per
  chunk the [chunk, V] logits are formed, their log-sum-exp taken in fp32, and the gradients computed right
  away (softmax − one-hot): grad_hidden for the chunk's rows and grad_weight accumulated in fp32. Backward
  only scales these by the upstream gradient. Peak extra memory: one [chunk, V] fp32 tile plus grad_weight.
- ``"liger"``: liger-kernel's ``LigerFusedLinearCrossEntropyFunction`` (Triton, the same chunk-and-
  precompute-gradients scheme). Used on CUDA when ``liger_kernel`` is importable; it is *not* a dependency
  (STACK.md: ``pip install --no-deps liger-kernel==0.8.5`` in GPU images). Called through
  ``liger_kernel.transformers.functional.liger_fused_linear_cross_entropy`` with keyword arguments.
- ``"naive"``: full logits and ``F.cross_entropy`` (the oracle in tests and benchmarks).
- ``"auto"``: liger on CUDA if importable, else chunked.

Wiring into megatron-core's output layer, ZeRO-3 and tied embeddings: docs/kernels.md.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = -100
IMPLS = ("auto", "chunked", "liger", "naive")
REDUCTIONS = ("sum", "mean")
_WHERE = "prealign_scale/kernels/lm_head_loss.py"


def liger_available() -> bool:
    """True when liger-kernel's fused linear cross-entropy can be imported."""
    try:
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy  # noqa: F401
    except ImportError:
        return False
    return True


def default_chunk_size(num_tokens: int, vocab: int, hidden: int) -> int:
    """Tokens per chunk so that one [chunk, V] logits tile is about the size of hidden [T, H] (>= 256).

    The liger heuristic (chunk ≈ T / ceil(V / H), rounded up to a power of two), with a floor so that CPU
    matmuls stay large enough to be efficient.
    """
    chunk = 2 ** math.ceil(math.log2(max(1, math.ceil(num_tokens / math.ceil(vocab / hidden)))))
    return max(1, min(num_tokens, max(256, chunk)))


def _check(hidden: Tensor, weight: Tensor, targets: Tensor, reduction: str, impl: str) -> None:
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(
            f"{_WHERE}: hidden must be [T, H] and weight [V, H] with the same H, got {tuple(hidden.shape)} "
            f"and {tuple(weight.shape)}"
        )
    if targets.dtype != torch.int64 or targets.shape != (hidden.shape[0],):
        raise ValueError(
            f"{_WHERE}: targets must be int64 of shape [{hidden.shape[0]}], got {targets.dtype} "
            f"{tuple(targets.shape)}"
        )
    if not hidden.is_floating_point() or hidden.dtype != weight.dtype:
        raise ValueError(f"{_WHERE}: hidden ({hidden.dtype}) and weight ({weight.dtype}) must share a float dtype")
    if reduction not in REDUCTIONS:
        raise ValueError(f"{_WHERE}: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if impl not in IMPLS:
        raise ValueError(f"{_WHERE}: impl must be one of {IMPLS}, got {impl!r}")
    bad = (targets != IGNORE_INDEX) & ((targets < 0) | (targets >= weight.shape[0]))
    if bool(bad.any()):
        first = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"{_WHERE}: targets[{first}] = {int(targets[first])} is neither in [0, {weight.shape[0]}) (the "
            f"vocabulary of weight) nor the ignore index {IGNORE_INDEX}"
        )


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Sum of token losses; gradients are computed chunk by chunk in forward and scaled in backward."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_size):
        T, _ = hidden.shape
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        acc = torch.float64 if hidden.dtype == torch.float64 else torch.float32
        grad_hidden = torch.empty_like(hidden) if need_h else None
        grad_weight = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        total = torch.zeros((), dtype=acc, device=hidden.device)
        for t0 in range(0, T, chunk_size):
            t1 = min(t0 + chunk_size, T)
            h, tgt = hidden[t0:t1], targets[t0:t1]
            logits = torch.matmul(h, weight.t()).to(acc)  # [c, V], the only vocabulary-sized tile
            valid = tgt != IGNORE_INDEX
            safe = torch.where(valid, tgt, torch.zeros_like(tgt))
            lse = torch.logsumexp(logits, dim=-1)
            target_logit = logits.gather(1, safe[:, None]).squeeze(1)
            total += torch.where(valid, lse - target_logit, torch.zeros_like(lse)).sum()
            if not (need_h or need_w):
                continue
            # d(lse − logit_t)/dlogits = softmax − onehot(t), zero for ignored tokens; in place on the tile.
            grad_logits = logits.sub_(lse[:, None]).exp_()
            grad_logits[torch.arange(t1 - t0, device=h.device), safe] -= 1.0
            grad_logits *= valid[:, None].to(acc)
            g = grad_logits.to(hidden.dtype)
            if need_h:
                grad_hidden[t0:t1] = torch.matmul(g, weight)
            if need_w:
                grad_weight += torch.matmul(g.t(), h).to(acc)
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.has = (need_h, need_w)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_hidden, grad_weight = ctx.saved_tensors
        need_h, need_w = ctx.has
        gh = (grad_hidden * grad_out.to(grad_hidden.dtype)) if need_h else None
        gw = (grad_weight * grad_out.to(grad_weight.dtype)).to(ctx.weight_dtype) if need_w else None
        return gh, gw, None, None


def fused_linear_cross_entropy(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    reduction: str = "sum",
    chunk_size: int | None = None,
    impl: str = "auto",
) -> Tensor:
    """Cross-entropy of ``hidden @ weightᵀ`` against ``targets`` (−100 = ignore), never forming [T, V] logits.

    Returns a 0-dim tensor: the sum over non-ignored tokens (``reduction="sum"``, what the engine uses), or
    their mean (``"mean"``; NaN when every token is ignored, as ``F.cross_entropy``). The loss is fp32 (fp64
    for fp64 inputs); gradients come back in the input dtype.
    """
    _check(hidden, weight, targets, reduction, impl)
    if impl == "auto":
        impl = "liger" if (hidden.device.type == "cuda" and liger_available()) else "chunked"
    if impl == "naive":
        logits = torch.matmul(hidden, weight.t())
        logits = logits if logits.dtype == torch.float64 else logits.float()
        return F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction=reduction)
    if impl == "liger":
        try:
            from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy
        except ImportError as exc:
            raise ValueError(f"{_WHERE}: impl='liger' but liger-kernel is not installed ({exc})") from exc
        return liger_fused_linear_cross_entropy(
            input=hidden, weight=weight, target=targets, ignore_index=IGNORE_INDEX, reduction=reduction
        )
    T, H = hidden.shape
    chunk = default_chunk_size(T, weight.shape[0], H) if chunk_size is None else int(chunk_size)
    if chunk < 1:
        raise ValueError(f"{_WHERE}: chunk_size must be >= 1, got {chunk_size!r}")
    total = _ChunkedLinearCrossEntropy.apply(hidden, weight, targets, chunk)
    if reduction == "mean":
        total = total / (targets != IGNORE_INDEX).sum()
    return total
