"""The contrastive alignment loss (METHOD.md §2): reference, chunked PyTorch and Triton implementations.

Oracle chain: a python-loop brute force  ->  alignment.loss (naive, autograd)  ->  kernels (chunked, Triton),
all reached through the dispatch of alignment.loss; then the distributed objective (alignment.objective) on
fake ranks and on 2 gloo ranks. The Triton kernels run under TRITON_INTERPRET=1 in a subprocess (the variable
must be set before the kernel module is imported): `test_triton_kernels_under_interpreter` runs this file as a
script.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from prealign_scale.alignment.loss import (
    NORM_EPS,
    alignment_loss,
    alignment_loss_rows,
    contrastive_alignment_loss,
    contrastive_alignment_loss_rows,
    positive_cosine,
    resolve_impl,
)
from prealign_scale.kernels import align_loss as blockwise
from prealign_scale.kernels.align_loss import positive_counts

ROOT = Path(__file__).resolve().parents[1]
TAU = 0.1


# ----------------------------------------------------------------------------------------------- inputs
def make_entries(N: int, gen: torch.Generator) -> torch.Tensor:
    """Entry ids with groups of 1..4 words (singletons: rows without positives; 3-4: several positives)."""
    ids, next_id = [], 0
    while len(ids) < N:
        size = int(torch.randint(1, 5, (1,), generator=gen))
        ids += [next_id] * size
        next_id += 1
    ids = torch.tensor(ids[:N], dtype=torch.int64)
    return ids[torch.randperm(N, generator=gen)] * 7 + 3  # non-contiguous ids, shuffled rows


def make_batch(L: int, N: int, H: int, dtype=torch.float64, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    vectors = (torch.randn(L, N, H, generator=gen, dtype=torch.float64) * 2 + 0.3).to(dtype)
    return vectors, make_entries(N, gen)


def brute_force(vectors: torch.Tensor, entry_ids: torch.Tensor, tau: float = TAU) -> list[float]:
    """METHOD.md §2 with python floats and loops: per-layer losses."""
    L, N, _ = vectors.shape
    v = vectors.double().tolist()
    ids = entry_ids.tolist()
    out = []
    for layer in range(L):
        z = [[x / math.sqrt(sum(y * y for y in row)) for x in row] for row in v[layer]]
        losses = []
        for i in range(N):
            positives = [j for j in range(N) if j != i and ids[j] == ids[i]]
            if not positives:
                continue
            s = [sum(a * b for a, b in zip(z[i], z[j])) / tau for j in range(N)]
            lse = math.log(sum(math.exp(s[j]) for j in range(N) if j != i))
            losses.append(-sum(s[p] - lse for p in positives) / len(positives))
        out.append(sum(losses) / len(losses))
    return out


def release_formula(vectors: torch.Tensor, entry_ids: torch.Tensor, tau: float = TAU) -> torch.Tensor:
    """The authors' ContrastiveMultiMetric (METHOD.md §6), kept only here as a counter-example.

    Defects: the max is taken over dim=1 (per column, not per row), self is "masked" by multiplying its
    logit with 0 (exp(0) stays in the denominator), and the positive mask includes the row itself.
    (The release also used the (values, indices) tuple of torch.max as a tensor; .values is taken here.)
    """
    states = torch.nn.functional.normalize(vectors.float(), dim=-1)
    L, Bk, _ = states.shape
    logits = torch.einsum("lih,ljh->lij", states, states) / tau
    logits = logits - torch.max(logits, dim=1, keepdim=True).values.detach()
    self_mask = torch.ones(Bk, Bk)
    self_mask[range(Bk), range(Bk)] = 0
    pos_mask = (entry_ids[:, None] == entry_ids[None, :]).expand(L, Bk, Bk)
    logits = logits * self_mask
    logprob = logits - logits.logsumexp(dim=-1, keepdim=True)
    loss = -((pos_mask * logprob).sum(dim=-1).sum(dim=-1)) / pos_mask.sum(dim=-1).sum(dim=-1)
    return loss.mean()


# ------------------------------------------------------------------------------------- the reference
@pytest.mark.parametrize("L,N,H,seed", [(1, 2, 3, 0), (2, 11, 5, 1), (3, 23, 8, 2)])
def test_reference_matches_brute_force(L, N, H, seed):
    vectors, ids = make_batch(L, N, H, seed=seed)
    if N == 2:
        ids = torch.tensor([5, 5])
    mean, per_layer = contrastive_alignment_loss(vectors, ids, tau=TAU)
    expected = brute_force(vectors, ids)
    torch.testing.assert_close(per_layer, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    assert mean.item() == pytest.approx(sum(expected) / L, abs=1e-12)


def test_release_formula_differs_from_ours_on_a_toy_batch():
    # Three translation pairs and one word without a translation, one layer.
    vectors = torch.tensor(
        [[[1.0, 0.2, 0.0], [0.9, 0.3, 0.1], [0.0, 1.0, 0.2], [0.1, 0.8, 0.3],
          [0.2, 0.1, 1.0], [0.0, 0.3, 0.9], [0.5, 0.5, 0.5]]],
        dtype=torch.float64,
    )
    ids = torch.tensor([0, 0, 1, 1, 2, 2, 3])
    ours = contrastive_alignment_loss(vectors, ids, tau=TAU)[0].item()
    assert ours == pytest.approx(brute_force(vectors, ids)[0], abs=1e-12)
    buggy = release_formula(vectors, ids).item()
    # METHOD.md §6 reports 5.73 vs 1.21 on the authors' (unpublished) toy batch; here 0.727 vs 0.114.
    assert buggy - ours > 0.5, (buggy, ours)
    # Masking self by multiplying with 0 alone (row-wise max, no other change) is already wrong.
    s = torch.nn.functional.normalize(vectors[0], dim=-1) @ torch.nn.functional.normalize(vectors[0], dim=-1).T
    s = s / TAU
    s = (s - s.max(dim=1, keepdim=True).values) * (1 - torch.eye(7, dtype=s.dtype))
    lp = s - s.logsumexp(dim=1, keepdim=True)
    times_zero = -(lp[[0, 1, 2, 3, 4, 5], [1, 0, 3, 2, 5, 4]]).mean().item()
    assert abs(times_zero - ours) > 0.1, (times_zero, ours)


def test_rows_without_positive_are_skipped_and_all_singletons_raise():
    vectors, _ = make_batch(2, 6, 4, seed=3)
    ids = torch.tensor([1, 2, 1, 3, 4, 5])  # only rows 0 and 2 have a positive
    sums, count = contrastive_alignment_loss_rows(vectors, vectors, ids, ids, 0, tau=TAU)
    assert int(count) == 2
    # Rows 0 and 2 (with all 6 words as candidates) make the loss; the brute force skips the same rows.
    expected = brute_force(vectors, ids)
    torch.testing.assert_close(sums / 2, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="no word has a positive"):
        contrastive_alignment_loss(vectors, torch.arange(6), tau=TAU)
    with pytest.raises(ValueError, match="no word has a positive"):
        alignment_loss(vectors, torch.arange(6), tau=TAU, impl="chunked")


def test_positive_cosine_matches_pairwise_loop():
    vectors, ids = make_batch(3, 17, 6, seed=4)
    z = torch.nn.functional.normalize(vectors, dim=-1)
    expected = []
    for layer in range(3):
        cos = [float(z[layer, i] @ z[layer, j]) for i in range(17) for j in range(17)
               if i != j and ids[i] == ids[j]]
        expected.append(sum(cos) / len(cos))
    got = positive_cosine(vectors, ids)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=1e-10, atol=1e-12)
    assert not got.requires_grad


def test_positive_counts_matches_pairwise_definition():
    _, ids = make_batch(1, 40, 1, seed=5)
    expected = torch.tensor([int(((ids == ids[i]).sum()) - 1) for i in range(40)])
    assert torch.equal(positive_counts(ids, ids), expected)
    assert torch.equal(positive_counts(ids[10:20], ids), expected[10:20])


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"vectors_local": torch.randn(2, 3, 4), "vectors_all": torch.randn(2, 8)}, "vectors_all must be"),
        ({"vectors_local": torch.randn(3, 3, 4)}, "must agree in layers"),
        ({"entry_local": torch.zeros(3, dtype=torch.int32)}, "entry_local must be int64"),
        ({"entry_all": torch.zeros(7, dtype=torch.int64)}, "entry_all must be int64"),
        ({"row_offset": 6}, "row_offset=6"),
        ({"tau": 0.0}, "tau must be > 0"),
        ({"entry_local": torch.tensor([9, 9, 9])}, "entry_local must equal entry_all"),
    ],
)
@pytest.mark.parametrize("impl", ["naive", "chunked"])
def test_bad_inputs_raise(kwargs, match, impl):
    args = {"vectors_local": torch.randn(2, 3, 4), "vectors_all": torch.randn(2, 8, 4),
                "entry_local": torch.tensor([0, 1, 1]), "entry_all": torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]),
                "row_offset": 1, "tau": TAU}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        alignment_loss_rows(**args, impl=impl)


def test_impl_selection():
    cpu = torch.device("cpu")
    assert resolve_impl("auto", cpu) == "chunked"
    assert resolve_impl("auto", torch.device("cuda", 0)) == "triton"
    with pytest.raises(ValueError, match="impl must be one of"):
        resolve_impl("flash", cpu)
    if os.environ.get("TRITON_INTERPRET") != "1":
        with pytest.raises(ValueError, match="needs CUDA tensors"):
            resolve_impl("triton", cpu)


# --------------------------------------------------------------------------- chunked vs the reference
def loss_and_grad(impl: str, vectors: torch.Tensor, ids: torch.Tensor, block_size=None):
    v = vectors.detach().clone().requires_grad_()
    mean, per_layer = alignment_loss(v, ids, tau=TAU, impl=impl, block_size=block_size)
    # A non-uniform upstream gradient over layers exercises the per-layer scaling of the backward.
    weights = torch.linspace(0.5, 1.5, per_layer.numel(), dtype=per_layer.dtype)
    (grad,) = torch.autograd.grad(mean + (per_layer * weights).sum(), v)
    return mean.detach(), per_layer.detach(), grad


@pytest.mark.parametrize(
    "L,N,H,block",
    [(1, 5, 3, 2), (3, 37, 8, 8), (2, 64, 16, 16), (4, 50, 32, 7), (2, 30, 6, 64)],
)
def test_chunked_matches_reference_fp64(L, N, H, block):
    vectors, ids = make_batch(L, N, H, seed=L * 100 + N)
    counts = positive_counts(ids, ids)
    if N >= 30:  # the batches cover rows without positives and rows with several positives
        assert (counts == 0).any() and (counts >= 2).any()
    ref = loss_and_grad("naive", vectors, ids)
    got = loss_and_grad("chunked", vectors, ids, block)
    for a, b in zip(ref, got):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


def test_chunked_matches_reference_with_a_zero_vector():
    """A zero vector normalises to zero (as F.normalize); both paths give the same finite gradients."""
    vectors, ids = make_batch(2, 12, 5, seed=13)
    vectors[:, 3] = 0.0
    assert blockwise.NORM_EPS == NORM_EPS  # the kernels keep their own copy of the clamp
    ref = loss_and_grad("naive", vectors, ids)
    got = loss_and_grad("chunked", vectors, ids, 5)
    assert all(torch.isfinite(t).all() for t in got)
    for a, b in zip(ref, got):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "dtype,rtol,atol",
    # gradient atol: one ulp of the dtype at the largest gradient (bf16 2^-7, fp16 2^-10)
    [(torch.float32, 1e-5, 1e-6), (torch.bfloat16, 1e-5, 2**-7), (torch.float16, 1e-5, 2**-10)],
)
def test_chunked_matches_reference_low_precision(dtype, rtol, atol):
    # Both paths up-cast to fp32, so the loss agrees to fp32 rounding; gradients are returned in the
    # input dtype, so they agree to one rounding of that dtype.
    vectors, ids = make_batch(3, 45, 16, dtype=dtype, seed=7)
    ref = loss_and_grad("naive", vectors, ids)
    got = loss_and_grad("chunked", vectors, ids, 16)
    assert got[0].dtype == torch.float32 and got[2].dtype == dtype
    torch.testing.assert_close(got[0], ref[0], rtol=rtol, atol=1e-5)
    torch.testing.assert_close(got[1], ref[1], rtol=rtol, atol=1e-5)
    scale = ref[2].float().abs().max()
    torch.testing.assert_close(got[2].float() / scale, ref[2].float() / scale, rtol=0, atol=atol)


def test_chunked_rows_match_reference_rows_with_separate_tensors():
    vectors, ids = make_batch(2, 29, 8, seed=8)
    off, n = 9, 11
    local = vectors[:, off:off + n].clone()
    results = []
    for impl in ("naive", "chunked"):
        q, k = local.clone().requires_grad_(), vectors.clone().requires_grad_()
        sums, count = alignment_loss_rows(q, k, ids[off:off + n], ids, off, tau=TAU, impl=impl, block_size=4)
        (sums * torch.tensor([0.7, 1.3], dtype=sums.dtype)).sum().backward()
        results.append((sums.detach(), int(count), q.grad, k.grad))
    (s0, c0, q0, k0), (s1, c1, q1, k1) = results
    assert c0 == c1 == int((positive_counts(ids[off:off + n], ids) > 0).sum())
    for a, b in ((s0, s1), (q0, q1), (k0, k1)):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


def test_chunked_gradcheck_fp64():
    vectors, ids = make_batch(2, 9, 4, seed=9)
    v = vectors.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda x: alignment_loss(x, ids, tau=TAU, impl="chunked", block_size=4)[1],
                                    (v,), eps=1e-6, atol=1e-7)
    q = vectors[:, 2:6].clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b: alignment_loss_rows(a, b, ids[2:6], ids, 2, tau=TAU, impl="chunked", block_size=3)[0],
        (q, v), eps=1e-6, atol=1e-7)


def test_chunked_never_materialises_n_by_n():
    """Record every tensor that forward and backward create; none may hold N×N elements."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class MaxNumel(TorchDispatchMode):
        largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    MaxNumel.largest = max(MaxNumel.largest, t.numel())
            return out

    L, N, H, block = 2, 300, 8, 32
    vectors, ids = make_batch(L, N, H, dtype=torch.float32, seed=10)
    for impl, bound in (("chunked", L * N * H), ("naive", L * N * N)):
        MaxNumel.largest = 0
        v = vectors.clone().requires_grad_()
        with MaxNumel():
            alignment_loss(v, ids, tau=TAU, impl=impl, block_size=block)[0].backward()
        assert MaxNumel.largest == bound, (impl, MaxNumel.largest)  # chunked: inputs; naive: the logits


# ------------------------------------------------------------------------------- distributed rows
@pytest.mark.parametrize("impl", ["naive", "chunked"])
@pytest.mark.parametrize("split", [(13,), (5, 12, 4)])
def test_fake_ranks_reproduce_single_process_loss_and_grads(impl, split):
    """Ranks own consecutive slices; each computes its rows against an all-gathered copy (a separate leaf
    standing for all_gather's output); gather's backward sums the gathered copies' gradients over ranks."""
    L, H = 3, 8
    N = 21
    vectors, ids = make_batch(L, N, H, seed=11)
    ids[:2] = torch.tensor([1000, 1001])  # two singletons on the first rank
    sizes = list(split) + [N - sum(split)]
    _, ref_layers, ref_grad = loss_and_grad("naive", vectors, ids)

    local_leaves, gathered_leaves, sums, counts, off = [], [], [], [], 0
    for n in sizes:
        local = vectors[:, off:off + n].clone().requires_grad_()
        gathered = vectors.clone().requires_grad_()
        s, c = alignment_loss_rows(local, gathered, ids[off:off + n], ids, off, tau=TAU, impl=impl,
                                   block_size=5)
        local_leaves.append(local), gathered_leaves.append(gathered), sums.append(s), counts.append(c)
        off += n
    total = sum(int(c) for c in counts)
    per_layer = [s / total for s in sums]  # each rank's share
    weights = torch.linspace(0.5, 1.5, L, dtype=torch.float64)
    objective = sum(p.mean() + (p * weights).sum() for p in per_layer)
    objective.backward()
    torch.testing.assert_close(sum(per_layer), ref_layers, rtol=1e-12, atol=1e-12)
    reduced = sum(g.grad for g in gathered_leaves)  # all_gather backward: sum over ranks
    grad, off = torch.empty_like(ref_grad), 0
    for n, local in zip(sizes, local_leaves):
        grad[:, off:off + n] = local.grad + reduced[:, off:off + n]
        off += n
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)


def _gloo_worker(impl: str) -> None:
    """One rank of the 2-rank check: the alignment objective's gather, rows and global normalisation.

    Runs under `tests/distributed.run_distributed_test` (the gloo group is up; teardown is the helper's)."""
    import torch.distributed as dist

    from prealign_scale.alignment.objective import global_layer_losses, rank_alignment_rows

    rank = dist.get_rank()
    vectors, ids = make_batch(2, 19, 6, seed=12)
    sizes = [7, 12]  # unequal rows per rank: the gather pads and trims
    off, n = sum(sizes[:rank]), sizes[rank]
    v = vectors.clone().requires_grad_()
    ref_mean, ref_layers = contrastive_alignment_loss(v, ids, tau=TAU)
    (ref_grad,) = torch.autograd.grad(ref_mean, v)

    local = vectors[:, off:off + n].clone().requires_grad_()
    rows = rank_alignment_rows(local, ids[off:off + n], tau=TAU, impl=impl, block_size=4)
    share = rows.share()
    share.backward()
    global_layers = global_layer_losses(rows.sums.detach()[None], rows.count_all[None])  # one micro-batch
    global_mean = global_layers.mean()
    torch.testing.assert_close(global_mean, ref_mean.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(global_layers, ref_layers.detach(), rtol=1e-12, atol=1e-12)
    total_share = share.detach().clone()
    dist.all_reduce(total_share)
    torch.testing.assert_close(total_share, ref_mean.detach(), rtol=1e-12, atol=1e-12)
    # The gather's backward sums the ranks' gradients: each rank's words get the single-process gradient.
    torch.testing.assert_close(local.grad, ref_grad[:, off:off + n], rtol=1e-10, atol=1e-12)
    return rank


@pytest.mark.slow
def test_alignment_objective_two_gloo_ranks():
    from distributed import run_distributed_test

    assert run_distributed_test(_gloo_worker, world_size=2, func_args=("chunked",), timeout=240) == [0, 1]


# ------------------------------------------------------------------------------ Triton (interpreter)
def _triton_checks() -> None:
    """Run as a script with TRITON_INTERPRET=1: the Triton path against the reference, grids <= 16."""
    assert os.environ.get("TRITON_INTERPRET") == "1"
    # Forward and gradients, fp32/fp64: N not a multiple of the block (37 = 2·16 + 5), grid (2, 3).
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
        vectors, ids = make_batch(2, 37, 20, dtype=dtype, seed=20)
        assert (positive_counts(ids, ids) == 0).any() and (positive_counts(ids, ids) >= 2).any()
        ref = loss_and_grad("naive", vectors, ids)
        got = loss_and_grad("triton", vectors, ids, 16)
        for a, b in zip(ref, got):
            torch.testing.assert_close(b, a, rtol=tol, atol=tol)
    # bf16/fp16 operands (fp32 accumulation): z is rounded to the input dtype before the matmuls.
    for dtype, loss_tol, grad_tol in ((torch.bfloat16, 2e-3, 3e-2), (torch.float16, 3e-4, 5e-3)):
        vectors, ids = make_batch(2, 40, 24, dtype=dtype, seed=21)
        ref = loss_and_grad("naive", vectors, ids)
        got = loss_and_grad("triton", vectors, ids, 16)
        assert got[2].dtype == dtype
        torch.testing.assert_close(got[1], ref[1], rtol=loss_tol, atol=loss_tol)
        scale = ref[2].float().abs().max()
        torch.testing.assert_close(got[2].float() / scale, ref[2].float() / scale, rtol=0, atol=grad_tol)
    # Rows variant with an offset and separate local / gathered tensors.
    vectors, ids = make_batch(2, 33, 8, seed=22)
    off, n = 17, 16
    results = []
    for impl in ("naive", "triton"):
        q, k = vectors[:, off:off + n].clone().requires_grad_(), vectors.clone().requires_grad_()
        sums, count = alignment_loss_rows(q, k, ids[off:off + n], ids, off, tau=TAU, impl=impl, block_size=16)
        (sums * torch.tensor([0.7, 1.3], dtype=sums.dtype)).sum().backward()
        results.append((sums.detach(), q.grad, k.grad, int(count)))
    for a, b in zip(results[0], results[1]):
        if isinstance(a, int):
            assert a == b
        else:
            torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)
    # fp64 gradcheck of the Triton path (the accumulator dtype is a tl.constexpr).
    vectors, ids = make_batch(1, 7, 3, seed=23)
    v = vectors.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda x: alignment_loss(x, ids, tau=TAU, impl="triton", block_size=16)[1],
                                    (v,), eps=1e-6, atol=1e-7)
    print("TRITON_CHECKS_OK")


def test_triton_kernels_under_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, __file__], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0 and "TRITON_CHECKS_OK" in proc.stdout, proc.stdout + proc.stderr


if __name__ == "__main__":
    _triton_checks()
