"""kernels/lm_head_loss.py: the chunked fused linear cross-entropy against F.cross_entropy on full logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from prealign_scale.kernels.lm_head_loss import (
    IGNORE_INDEX,
    default_chunk_size,
    fused_linear_cross_entropy,
    liger_available,
)


def make_inputs(T: int, H: int, V: int, dtype=torch.float32, seed: int = 0, ignore_every: int = 5):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(T, H, generator=gen, dtype=torch.float64).to(dtype)
    weight = (torch.randn(V, H, generator=gen, dtype=torch.float64) * 0.5).to(dtype)
    targets = torch.randint(0, V, (T,), generator=gen)
    targets[::ignore_every] = IGNORE_INDEX
    targets[1:2] = IGNORE_INDEX  # ignored tokens also inside a chunk, not only at its start
    return hidden, weight, targets


def reference(hidden, weight, targets, reduction="sum"):
    """The plain path: full logits (fp32, or fp64 for fp64 inputs) and F.cross_entropy."""
    h = hidden.detach().clone().requires_grad_()
    w = weight.detach().clone().requires_grad_()
    logits = h @ w.T
    logits = logits if logits.dtype == torch.float64 else logits.float()
    loss = F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction=reduction)
    (loss * 1.7).backward()  # a non-unit upstream gradient exercises the backward scaling
    return loss.detach(), h.grad, w.grad


def fused(hidden, weight, targets, **kwargs):
    h = hidden.detach().clone().requires_grad_()
    w = weight.detach().clone().requires_grad_()
    loss = fused_linear_cross_entropy(h, w, targets, **kwargs)
    (loss * 1.7).backward()
    return loss.detach(), h.grad, w.grad


@pytest.mark.parametrize(
    "T,H,V,chunk",
    [(1, 4, 7, None), (37, 8, 50, 8), (64, 16, 300, 64), (100, 12, 129, 33), (20, 8, 40, 1000)],
)
def test_chunked_matches_cross_entropy_fp64(T, H, V, chunk):
    hidden, weight, targets = make_inputs(T, H, V, dtype=torch.float64, seed=T)
    if T == 1:
        targets[0] = 3
    ref = reference(hidden, weight, targets)
    got = fused(hidden, weight, targets, chunk_size=chunk, impl="chunked")
    for a, b in zip(ref, got):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "dtype,loss_rtol,grad_atol",
    [(torch.float32, 1e-5, 1e-5), (torch.bfloat16, 2e-3, 2e-2), (torch.float16, 1e-3, 2e-3)],
)
def test_chunked_matches_cross_entropy_low_precision(dtype, loss_rtol, grad_atol):
    hidden, weight, targets = make_inputs(90, 16, 200, dtype=dtype, seed=3)
    ref = reference(hidden, weight, targets)
    got = fused(hidden, weight, targets, chunk_size=32, impl="chunked")
    assert got[0].dtype == torch.float32 and got[1].dtype == dtype and got[2].dtype == dtype
    torch.testing.assert_close(got[0], ref[0], rtol=loss_rtol, atol=0)
    for a, b in zip(ref[1:], got[1:]):
        scale = a.float().abs().max()
        torch.testing.assert_close(b.float() / scale, a.float() / scale, rtol=0, atol=grad_atol)


def test_mean_reduction_and_all_ignored():
    hidden, weight, targets = make_inputs(30, 8, 20, dtype=torch.float64, seed=4)
    ref = reference(hidden, weight, targets, reduction="mean")
    got = fused(hidden, weight, targets, reduction="mean", chunk_size=7, impl="chunked")
    for a, b in zip(ref, got):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)
    ignored = torch.full((30,), IGNORE_INDEX)
    loss, gh, gw = fused(hidden, weight, ignored, chunk_size=7, impl="chunked")
    assert loss.item() == 0.0 and torch.count_nonzero(gh) == 0 and torch.count_nonzero(gw) == 0


def test_ignored_tokens_do_not_contribute():
    """Changing the hidden state of an ignored token changes neither the loss nor other gradients."""
    hidden, weight, targets = make_inputs(16, 8, 30, dtype=torch.float64, seed=5)
    base = fused(hidden, weight, targets, chunk_size=4, impl="chunked")
    moved = hidden.clone()
    moved[0] += 3.0  # targets[0] is ignored
    after = fused(moved, weight, targets, chunk_size=4, impl="chunked")
    assert after[0].item() == pytest.approx(base[0].item(), abs=1e-12)
    torch.testing.assert_close(after[2], base[2], rtol=1e-12, atol=1e-12)
    assert torch.count_nonzero(base[1][0]) == 0


def test_sum_over_shards_equals_global_sum():
    """The engine sums per-micro-batch losses and divides by the global token count: that must equal the
    mean over the concatenated batch."""
    hidden, weight, targets = make_inputs(60, 8, 25, dtype=torch.float64, seed=6)
    parts = [fused_linear_cross_entropy(hidden[a:b], weight, targets[a:b], impl="chunked", chunk_size=8)
             for a, b in ((0, 17), (17, 41), (41, 60))]
    total_tokens = int((targets != IGNORE_INDEX).sum())
    whole = F.cross_entropy(hidden @ weight.T, targets, ignore_index=IGNORE_INDEX, reduction="mean")
    assert (sum(parts) / total_tokens).item() == pytest.approx(whole.item(), abs=1e-12)


def test_forward_only_computes_no_gradients():
    hidden, weight, targets = make_inputs(20, 8, 30, dtype=torch.float64, seed=7)
    with torch.no_grad():
        loss = fused_linear_cross_entropy(hidden, weight, targets, impl="chunked", chunk_size=6)
    ref = F.cross_entropy(hidden @ weight.T, targets, ignore_index=IGNORE_INDEX, reduction="sum")
    assert loss.item() == pytest.approx(ref.item(), abs=1e-12)
    # Gradient for the hidden states only (a frozen head): weight gets none.
    h = hidden.clone().requires_grad_()
    fused_linear_cross_entropy(h, weight, targets, impl="chunked", chunk_size=6).backward()
    ref_h = hidden.clone().requires_grad_()
    F.cross_entropy(ref_h @ weight.T, targets, ignore_index=IGNORE_INDEX, reduction="sum").backward()
    torch.testing.assert_close(h.grad, ref_h.grad, rtol=1e-12, atol=1e-12)


def test_auto_and_naive_and_liger_selection():
    hidden, weight, targets = make_inputs(12, 4, 9, dtype=torch.float64, seed=8)
    ref = F.cross_entropy(hidden @ weight.T, targets, ignore_index=IGNORE_INDEX, reduction="sum")
    for impl in ("auto", "naive", "chunked"):
        assert fused_linear_cross_entropy(hidden, weight, targets, impl=impl).item() == pytest.approx(
            ref.item(), abs=1e-12)
    if not liger_available():  # installed by scripts/install.sh: then tests/test_lm_head_liger.py runs it
        with pytest.raises(ValueError, match="liger-kernel is not installed"):
            fused_linear_cross_entropy(hidden, weight, targets, impl="liger")


def test_default_chunk_size():
    assert default_chunk_size(8192, 65536, 256) == 256  # liger heuristic 32 -> floor 256
    assert default_chunk_size(65536, 16384, 2048) == 8192
    assert default_chunk_size(100, 65536, 256) == 100  # never more than the tokens
    assert default_chunk_size(0, 10, 4) == 1


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"hidden": torch.randn(4, 3)}, "same H"),
        ({"targets": torch.zeros(4, dtype=torch.int32)}, "targets must be int64"),
        ({"targets": torch.tensor([0, 1, 9, 2])}, r"targets\[2\] = 9"),
        ({"targets": torch.tensor([0, -1, 2, 2])}, r"targets\[1\] = -1"),
        ({"weight": torch.randn(9, 5, dtype=torch.float64)}, "must share a float dtype"),
        ({"reduction": "none"}, "reduction must be one of"),
        ({"impl": "cut"}, "impl must be one of"),
        ({"chunk_size": 0}, "chunk_size must be >= 1"),
    ],
)
def test_bad_inputs_raise(kwargs, match):
    args = {"hidden": torch.randn(4, 5), "weight": torch.randn(9, 5), "targets": torch.tensor([0, 1, -100, 8]),
                "impl": "chunked"}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        fused_linear_cross_entropy(**args)
