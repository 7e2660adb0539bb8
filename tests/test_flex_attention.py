"""``model.attention: flex``: the flex-attention document block mask equals the dense-mask SDPA path.

Single process (the world-1 gloo group of tests/conftest.py). On CPU the real ``flex_attention`` runs eagerly
for the forward; torch 2.13 has no flex backward on CPU, so the gradient through the real flex kernel is
checked only with CUDA (and in benchmarks/gpu_check.py); on CPU the gradient tests check the module's CPU
path (the same document mask, dense). Tolerances: fp32, rtol 1e-5 / atol 1e-5 (outputs, gradients) and
1e-4 on the logits of the 2-layer model (different summation order only).
"""

from __future__ import annotations

import pytest
import torch

from prealign_scale.data.packed_masks import attention_mask_from_segments
from prealign_scale.model import flex_attention as flex_module
from prealign_scale.model.builder import (
    build_gpt_model,
    layer_spec,
    make_transformer_config,
    resolve_attention,
)
from prealign_scale.model.flex_attention import FlexAttention, document_block_mask
from prealign_scale.model.parallel import init_model_parallel
from prealign_scale.model.presets import get_preset
from prealign_scale.model.sdpa_attention import SDPAttention

TOL = {"rtol": 1e-5, "atol": 1e-5}
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def packed_segments(b: int, s: int, seed: int) -> torch.Tensor:
    """[b, s] segment ids of packed rows: several documents of random lengths per row (ids rise along the row,
    as the shard builder writes them), one row a single document, one row all padding (ids 0)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for r in range(b):
        if r == 1:
            rows.append(torch.full((s,), 7))  # one document fills the row
            continue
        if r == 2:
            rows.append(torch.zeros(s, dtype=torch.long))  # a padding row (skip_corrupt): ids 0
            continue
        cuts = torch.randperm(s - 1, generator=g)[:5].sort().values + 1  # 6 documents
        row = torch.zeros(s, dtype=torch.long)
        row[cuts] = 1
        rows.append(row.cumsum(0) + 3 * r)
    return torch.stack(rows)


def _pair():
    from megatron.core.transformer.enums import AttnMaskType

    config = make_transformer_config(get_preset("tiny"))  # 4 heads, 2 query groups (GQA), head dim 16
    kwargs = {"config": config, "layer_number": 1, "attn_mask_type": AttnMaskType.causal, "attention_type": "self"}
    return SDPAttention(**kwargs), FlexAttention(**kwargs)


def _qkv(s: int, b: int, seed: int, requires_grad: bool):
    g = torch.Generator().manual_seed(seed)
    shapes = ((s, b, 4, 16), (s, b, 2, 16), (s, b, 2, 16))  # [s, b, heads or groups, head dim]
    return [torch.randn(*sh, generator=g).to(DEVICE).requires_grad_(requires_grad) for sh in shapes]


@pytest.mark.parametrize("s", [64, 200])  # 200: not a multiple of flex's 128-token block
def test_flex_forward_equals_dense_sdpa(world1, monkeypatch, s):
    """The real flex_attention (eager on CPU) with the document block mask == SDPA with the dense mask."""
    sdpa, flex = _pair()
    calls = []
    real = flex_module._flex_fn
    monkeypatch.setattr(flex_module, "_flex_fn", lambda: calls.append(1) or real())
    b = 4
    segments = packed_segments(b, s, seed=s).to(DEVICE)
    q, k, v = _qkv(s, b, seed=1, requires_grad=False)
    with torch.no_grad():
        ref = sdpa(q, k, v, attention_mask_from_segments(segments))
        out = flex(q, k, v, segments)
    assert calls, "the flex kernel did not run"
    assert out.shape == ref.shape == (s, b, 64)
    torch.testing.assert_close(out, ref, **TOL)
    # inputs that require grad, under no_grad (evaluation of a trained model): still the flex kernel
    with torch.no_grad():
        calls.clear()
        torch.testing.assert_close(flex(*(t.clone().requires_grad_() for t in (q, k, v)), segments), out)
        assert calls
    # the mask really restricts: plain causal differs on the multi-document rows
    with torch.no_grad():
        assert (flex(q, k, v, None) - out)[:, 0].abs().max() > 1e-3


def test_flex_gradients_equal_dense_sdpa(world1):
    """Output and q/k/v gradients of the flex module == the dense-mask SDPA path (fp32). With CUDA this is
    the compiled flex kernel's backward; on CPU the module's CPU training path (see its docstring)."""
    sdpa, flex = _pair()
    s, b = 200, 4
    segments = packed_segments(b, s, seed=5).to(DEVICE)
    weight = torch.linspace(-1, 1, s * b * 64, device=DEVICE).reshape(s, b, 64)
    results = []
    for module, mask in ((sdpa, attention_mask_from_segments(segments)), (flex, segments)):
        q, k, v = _qkv(s, b, seed=2, requires_grad=True)
        out = module(q, k, v, mask)
        (out * weight).sum().backward()
        results.append([out.detach(), q.grad, k.grad, v.grad])
    for got, want in zip(results[1], results[0]):
        torch.testing.assert_close(got, want, **TOL)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU limitation itself")
def test_cpu_flex_backward_is_still_missing():
    """Why the CPU training path exists: torch 2.13's flex_attention refuses a backward on CPU. When a torch
    upgrade adds it, this fails: then drop the dense CPU path of FlexAttention."""
    from torch.nn.attention.flex_attention import flex_attention

    q = torch.randn(1, 1, 8, 4, requires_grad=True)
    with pytest.raises(NotImplementedError, match="backward on CPU"):
        flex_attention(q, q, q)


def test_block_mask_is_built_once_per_segments_tensor():
    segments = packed_segments(2, 64, seed=0)
    first = document_block_mask(segments)
    assert document_block_mask(segments) is first  # every layer of one forward shares it
    assert document_block_mask(segments.clone()) is not first  # the next micro-batch: a new mask
    again = document_block_mask(segments)
    segments[0, :] = 0  # changed in place: rebuilt
    assert document_block_mask(segments) is not again


def test_builder_flex_model_equals_sdpa_model(world1):
    """The tiny preset through the builder: model.attention=flex given the segment ids == sdpa given the
    dense mask (same weights): logits, per-token loss and parameter gradients."""
    init_model_parallel(1, seed=1234)
    s, b, vocab = 96, 3, 1024
    sdpa_model = build_gpt_model(get_preset("tiny"), vocab, s, attention="sdpa").to(DEVICE)
    flex_model = build_gpt_model(get_preset("tiny"), vocab, s, attention="flex").to(DEVICE)
    flex_model.load_state_dict(sdpa_model.state_dict())
    assert isinstance(flex_model.decoder.layers[0].self_attention.core_attention, FlexAttention)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (b, s), generator=g).to(DEVICE)
    pos = torch.arange(s, device=DEVICE).expand(b, s)
    segments = packed_segments(b, s, seed=9).to(DEVICE)
    with torch.no_grad():  # forward: the real flex kernel, on CPU too
        torch.testing.assert_close(flex_model(ids, pos, segments),
                                   sdpa_model(ids, pos, attention_mask_from_segments(segments)),
                                   rtol=1e-4, atol=1e-4)
    losses, grads = [], []
    for model, mask in ((sdpa_model, attention_mask_from_segments(segments)), (flex_model, segments)):
        loss = model(ids, pos, mask, labels=ids)
        loss.sum().backward()
        losses.append(loss.detach())
        grads.append({n: p.grad for n, p in model.named_parameters()})
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-4, atol=1e-4)
    for name, want in grads[0].items():
        torch.testing.assert_close(grads[1][name], want, rtol=1e-4, atol=1e-5, msg=name)


def test_flex_layer_spec_and_refusals(world1):
    from prealign_scale.model.builder import transformer_engine_available

    assert layer_spec("flex").submodules.self_attention.submodules.core_attention is FlexAttention
    assert resolve_attention("flex") == ("te+flex" if transformer_engine_available() else "flex")
    _, flex = _pair()
    q, k, v = _qkv(8, 2, seed=0, requires_grad=False)
    with pytest.raises(ValueError, match=r"segment ids must be \[b, s\] = \[2, 8\]"):
        flex(q, k, v, torch.zeros(2, 9, dtype=torch.long, device=DEVICE))
    from megatron.core.transformer.enums import AttnMaskType

    config = make_transformer_config(get_preset("tiny"))
    with pytest.raises(ValueError, match="attention dropout is not supported"):
        FlexAttention(config, 1, AttnMaskType.causal, "self", attention_dropout=0.1)
