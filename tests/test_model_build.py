"""The megatron-core builder, SDPA core attention, CPU accommodations and model-parallel helpers.

Single process (a world-1 gloo group, tests/conftest.py) unless marked slow; the slow test runs 2 in-process
ranks (tests/distributed.py) with real DeepSpeed ZeRO-3 (tests/dist_scripts/model_two_ranks.py).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from prealign_scale.model import cpu_compat
from prealign_scale.model.builder import build_gpt_model, layer_spec, make_transformer_config, pad_vocab_size
from prealign_scale.model.parallel import (
    MegatronMPU,
    dp_group,
    dp_rank,
    dp_world_size,
    init_model_parallel,
    tp_group,
)
from prealign_scale.model.presets import PRESETS, get_preset

REPO = Path(__file__).resolve().parents[1]


def build(name: str, vocab: int, seed: int = 1234, **kwargs):
    init_model_parallel(1, seed=seed)
    return build_gpt_model(get_preset(name), vocab, 128, **kwargs)


# ---------------------------------------------------------------- parameter counts and initialisation

@pytest.mark.parametrize(("name", "vocab"), [("tiny", 1024), ("synth-3m", 16384)])
def test_preset_count_equals_built_model(world1, name, vocab):
    model = build(name, vocab)
    assert sum(p.numel() for p in model.parameters()) == get_preset(name).num_params(vocab)
    assert not any(n.endswith("bias") for n, _ in model.named_parameters())
    assert model.output_layer.weight is not model.embedding.word_embeddings.weight


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_built_on_the_meta_device_has_the_formula_counts(world1, name):
    """Each preset (70b too) built for real on the meta device (shapes only, no memory): the parameter count
    and the matmul parameters that FLOPs/token and MFU use equal the preset's formulas."""
    vocab = 32000
    preset = get_preset(name)
    init_model_parallel(1, seed=1)
    with torch.device("meta"):
        model = build_gpt_model(preset, vocab, 128)
    params = dict(model.named_parameters())
    assert {p.device.type for p in params.values()} == {"meta"}
    assert sum(p.numel() for p in params.values()) == preset.num_params(vocab)
    # matmul weights: every 2-D weight except the input embedding (a lookup)
    matmul = sum(p.numel() for n, p in params.items() if p.dim() == 2 and "word_embeddings" not in n)
    assert matmul == preset.matmul_params(vocab)
    assert len(model.decoder.layers) == preset.num_layers


def test_initialisation_statistics(world1):
    preset = get_preset("synth-3m")
    model = build("synth-3m", 16384)
    scaled = 0.02 / math.sqrt(2 * preset.num_layers)
    groups: dict[str, list[torch.Tensor]] = {"normal": [], "scaled": [], "norm": []}
    for name, p in model.named_parameters():
        if "layernorm" in name:
            groups["norm"].append(p.detach().flatten())
        elif name.endswith(("linear_proj.weight", "linear_fc2.weight")):
            groups["scaled"].append(p.detach().flatten())
        else:  # embedding, qkv, fc1, output layer
            groups["normal"].append(p.detach().flatten())
    normal, out_proj, norms = (torch.cat(groups[k]) for k in ("normal", "scaled", "norm"))
    assert torch.equal(norms, torch.ones_like(norms))
    assert abs(normal.std().item() - 0.02) / 0.02 < 0.01  # ~2.3M samples: std error ~0.05 %
    assert abs(out_proj.std().item() - scaled) / scaled < 0.01
    assert abs(normal.mean().item()) < 1e-4 and abs(out_proj.mean().item()) < 1e-4
    emb = model.embedding.word_embeddings.weight.detach()
    assert abs(emb.std().item() - 0.02) / 0.02 < 0.01


def test_same_seed_same_weights_other_seed_differs(world1):
    a, b, c = build("tiny", 1024, seed=5), build("tiny", 1024, seed=5), build("tiny", 1024, seed=6)
    for (name, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb), name
        if "layernorm" not in name:
            assert not torch.equal(pa, pc), name


# ---------------------------------------------------------------- forward contract

def test_forward_logits_loss_and_layer_hooks(world1):
    model = build("tiny", 1024).eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 1024, (3, 10), generator=g)
    pos = torch.arange(10).expand(3, 10)
    seen: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(_module, _inputs, output):
            seen[name] = output[0] if isinstance(output, tuple) else output
        return hook

    handles = [model.embedding.register_forward_hook(keep("emb")),
               model.decoder.layers[0].register_forward_hook(keep("layer0")),
               model.decoder.final_layernorm.register_forward_hook(keep("final"))]
    with torch.no_grad():
        logits = model(ids, pos, None)
        loss = model(ids, pos, None, labels=ids)
    for h in handles:
        h.remove()
    assert logits.shape == (3, 10, 1024)
    assert seen["emb"].shape == seen["layer0"].shape == seen["final"].shape == (10, 3, 64)  # [s, b, h]
    # The embedding hook sees the embedding rows; the unembedding of the final normed state gives the logits.
    assert torch.equal(seen["emb"], model.embedding.word_embeddings.weight[ids].transpose(0, 1))
    unembedded = seen["final"].transpose(0, 1) @ model.output_layer.weight.T
    torch.testing.assert_close(unembedded, logits, rtol=1e-5, atol=1e-6)
    # labels= returns the unreduced per-token loss [b, s].
    expected = F.cross_entropy(logits.reshape(-1, 1024), ids.reshape(-1), reduction="none").reshape(3, 10)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)


def test_boolean_mask_blocks_where_true(world1):
    model = build("tiny", 1024).eval()
    ids = torch.randint(0, 1024, (1, 8), generator=torch.Generator().manual_seed(1))
    pos = torch.arange(8)[None]
    causal = torch.triu(torch.ones(8, 8, dtype=torch.bool), diagonal=1)[None, None]
    # Two documents [0, 4) and [4, 8): block attention across the boundary too.
    docs = causal.clone()
    docs[..., 4:, :4] = True
    with torch.no_grad():
        plain = model(ids, pos, None)
        with_causal = model(ids, pos, causal)
        split = model(ids, pos, docs)
        second_alone = model(ids[:, 4:], pos[:, :4], None)
    torch.testing.assert_close(with_causal, plain, rtol=0, atol=0)
    torch.testing.assert_close(split[:, :4], plain[:, :4], rtol=0, atol=0)
    # RoPE is relative, so the second document alone (positions 0..3) gives the same logits.
    torch.testing.assert_close(split[:, 4:], second_alone, rtol=1e-5, atol=1e-5)
    assert (split[:, 4:] - plain[:, 4:]).abs().max() > 1e-4


# ---------------------------------------------------------------- SDPA core attention vs megatron's

def _attention_pair(attn_mask_type):
    from megatron.core.transformer.dot_product_attention import DotProductAttention

    from prealign_scale.model.sdpa_attention import SDPAttention

    config = make_transformer_config(get_preset("tiny"))  # 4 heads, 2 query groups, head dim 16
    kwargs = {"config": config, "layer_number": 1, "attn_mask_type": attn_mask_type, "attention_type": "self"}
    return DotProductAttention(**kwargs), SDPAttention(**kwargs)


@pytest.mark.parametrize("masked", [False, True])
def test_sdpa_matches_megatron_dot_product_attention(world1, masked):
    from megatron.core.transformer.enums import AttnMaskType

    megatron_attn, sdpa = _attention_pair(AttnMaskType.causal)
    g = torch.Generator().manual_seed(3)
    s, b = 12, 2
    q = torch.randn(s, b, 4, 16, generator=g, requires_grad=True)
    k = torch.randn(s, b, 2, 16, generator=g, requires_grad=True)
    v = torch.randn(s, b, 2, 16, generator=g, requires_grad=True)
    causal = torch.triu(torch.ones(s, s, dtype=torch.bool), diagonal=1).repeat(b, 1, 1, 1)
    mask = None  # SDPA's causal path (megatron's own default causal mask is built on "cuda": give it explicitly)
    if masked:  # causal + per-sample document boundaries + a padded key
        mask = causal.clone()
        mask[0, :, 5:, :5] = True
        mask[1, :, :, 9] = True
        mask[1, :, 9, 9] = False  # the padded token still sees itself: no fully blocked row
    outs, grads = [], []
    for module, module_mask in ((megatron_attn, causal if mask is None else mask), (sdpa, mask)):
        out = module(q, k, v, module_mask)
        (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
        outs.append(out.detach())
        grads.append([t.grad.clone() for t in (q, k, v)])
        for t in (q, k, v):
            t.grad = None
    assert outs[1].shape == (s, b, 64)
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-6)
    for g_sdpa, g_ref in zip(grads[1], grads[0]):
        torch.testing.assert_close(g_sdpa, g_ref, rtol=1e-5, atol=1e-6)


def test_sdpa_fully_blocked_row_is_finite(world1):
    from megatron.core.transformer.enums import AttnMaskType

    _, sdpa = _attention_pair(AttnMaskType.causal)
    q, k, v = torch.randn(4, 1, 4, 16), torch.randn(4, 1, 2, 16), torch.randn(4, 1, 2, 16)
    mask = torch.triu(torch.ones(4, 4, dtype=torch.bool), diagonal=1)[None, None].clone()
    mask[..., 2, :] = True  # query 2 may see nothing
    out = sdpa(q, k, v, mask)
    assert torch.isfinite(out).all()
    ref = sdpa(q, k, v, None)
    torch.testing.assert_close(out[:2], ref[:2])


def test_local_spec_uses_sdpa_and_rmsnorm(world1):
    from prealign_scale.model.sdpa_attention import SDPAttention

    model = build("tiny", 1024)
    layer = model.decoder.layers[0]
    assert isinstance(layer.self_attention.core_attention, SDPAttention)
    assert isinstance(layer.input_layernorm, torch.nn.RMSNorm)
    assert layer.input_layernorm.eps == get_preset("tiny").norm_eps
    assert model.rotary_pos_emb.inv_freq.shape == (get_preset("tiny").head_dim // 2,)
    from prealign_scale.model.builder import resolve_attention, transformer_engine_available

    for attention in ("auto", "sdpa"):
        assert layer_spec(attention).submodules.self_attention.submodules.core_attention is SDPAttention
    assert resolve_attention("sdpa") == "sdpa"
    assert resolve_attention("auto") == ("te+sdpa" if transformer_engine_available() else "sdpa")
    with pytest.raises(ValueError, match="attention must be one of"):
        layer_spec("flash")
    if not transformer_engine_available():
        with pytest.raises(RuntimeError, match="attention='te' but transformer_engine.pytorch does not import"):
            layer_spec("te")


# ---------------------------------------------------------------- CPU accommodations and parallel helpers

@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only accommodation")
def test_cpu_accommodation_is_idempotent(world1):
    assert cpu_compat.apply_cpu_accommodations() is True
    patched = torch.cuda.current_device
    assert cpu_compat.apply_cpu_accommodations() is True
    assert torch.cuda.current_device is patched
    assert cpu_compat.cpu_accommodations_active()
    assert torch.cuda.current_device() == torch.device("cpu")
    assert torch.empty(2, device=torch.cuda.current_device()).device.type == "cpu"


def test_parallel_helpers_and_mpu_at_world_one(world1):
    init_model_parallel(1, seed=1)
    mpu = MegatronMPU()
    assert (dp_rank(), dp_world_size()) == (0, 1)
    assert dist.get_world_size(dp_group()) == 1 and dist.get_world_size(tp_group()) == 1
    assert mpu.get_data_parallel_group() is dp_group()
    assert mpu.get_model_parallel_group() is tp_group()
    assert (mpu.get_data_parallel_rank(), mpu.get_data_parallel_world_size()) == (0, 1)
    assert (mpu.get_model_parallel_rank(), mpu.get_model_parallel_world_size()) == (0, 1)
    assert mpu.get_tensor_model_parallel_src_rank() == 0
    assert mpu.get_data_parallel_group_ranks() == [0]
    assert not hasattr(mpu, "initialize_sequence_parallel")


def test_bad_arguments_are_rejected(world1):
    with pytest.raises(ValueError, match="tensor_parallel_size=3"):
        init_model_parallel(3)
    init_model_parallel(1)
    tiny = get_preset("tiny")
    with pytest.raises(ValueError, match="vocab_size"):
        build_gpt_model(tiny, 0, 128)
    with pytest.raises(ValueError, match="stage is 2"):
        build_gpt_model(tiny, 1024, 128, ds_config={"zero_optimization": {"stage": 2}})
    with pytest.raises(ValueError, match="bfloat16"):
        build_gpt_model(tiny, 1024, 128, ds_config={"zero_optimization": {"stage": 3}, "bf16": {"enabled": True}})
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="needs CUDA"):
            build_gpt_model(tiny, 1024, 128, recompute_activations=True)


def test_bf16_build_has_one_dtype(world1):
    model = build("tiny", 1024, params_dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    ids = torch.randint(0, 1024, (1, 6), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert model(ids, torch.arange(6)[None], None).dtype == torch.bfloat16


def test_init_model_parallel_needs_a_process_group(world1, monkeypatch):
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    with pytest.raises(RuntimeError, match="torch.distributed is not initialised"):
        init_model_parallel(1)


def test_pad_vocab_size():
    assert pad_vocab_size(16384) == 16384
    assert pad_vocab_size(50257) == 50304
    assert pad_vocab_size(50257, tensor_parallel_size=8) == 51200
    assert pad_vocab_size(1, multiple=1) == 1


# ---------------------------------------------------------------- 2 ranks: TP=2 and ZeRO-3 partitioned build

@pytest.mark.slow
def test_two_ranks_tensor_parallel_and_zero3_partitioned_build():
    import model_two_ranks
    from distributed import run_distributed_test

    reports = run_distributed_test(model_two_ranks.check, world_size=2, timeout=600)
    preset = get_preset("tiny")
    scaled = 0.02 / math.sqrt(2 * preset.num_layers)
    for rank in (0, 1):
        r = json.loads(json.dumps(reports[rank]))  # as the torchrun version read it: tuples -> lists
        assert (r["rank"], r["world"]) == (rank, 2)
        # TP=2: each rank holds one query group (2 q heads + k + v = 4 heads of 16 rows) of the QKV.
        assert r["tp_shard_rows_qkv"] == 64
        assert r["tp_merged_equal"] is True
        assert r["tp_logits_maxdiff"] < 1e-5
        # ZeRO-3 over DP=2: half of every parameter per rank, nothing gathered outside forward.
        assert r["dp_world_size"] == 2
        shards = r["zero3_shard_numels"]
        assert len(shards) == 15
        for name, (local, total) in shards.items():
            assert local * 2 == total, name
        assert set(r["zero3_local_numels"].values()) == {0}
        assert sum(total for _, total in shards.values()) == preset.num_params(1024)
        # Initialisation survives zero.Init: gathered parameters equal the unpartitioned model's.
        assert all(r["zero3_equal_to_reference"].values())
        for name, (mean, std, _) in r["zero3_stats"].items():
            if "layernorm" in name:
                assert (mean, std) == (1.0, 0.0), name
            elif name.endswith(("linear_proj.weight", "linear_fc2.weight")):
                assert abs(std - scaled) / scaled < 0.05, name
            else:
                assert abs(std - 0.02) / 0.02 < 0.05, name
        assert r["zero3_logits_maxdiff"] == 0.0
        assert r["zero3_hook_shapes"] == {"embedding": [16, 2, 64], "layer1": [16, 2, 64],
                                          "final_norm": [16, 2, 64]}
