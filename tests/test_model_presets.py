"""Size presets: exact parameter counts, the FLOPs formula, names and validation (pure, no model built)."""

from __future__ import annotations

import dataclasses

import pytest

from prealign_scale.model.presets import PRESETS, ModelPreset, get_preset


def test_tiny_param_count_by_hand():
    # tiny: L=2, h=64, 4 heads of 16, 2 query groups, ffn 176, V=1024.
    emb = out = 1024 * 64
    qkv = 64 * 16 * (4 + 2 * 2)  # q: 4 heads, k and v: 2 groups each
    proj = 64 * 64
    fc1, fc2 = 64 * 2 * 176, 176 * 64
    norms = 2 * 64
    expected = emb + 2 * (norms + qkv + proj + fc1 + fc2) + 64 + out
    assert expected == 223_552
    assert get_preset("tiny").num_params(1024) == expected


@pytest.mark.parametrize(
    ("name", "count"),
    [("7b", 6_738_415_616), ("13b", 13_015_864_320), ("70b", 68_976_648_192)],
)
def test_llama2_counts_at_vocab_32000(name, count):
    # The published Llama-2 parameter counts (HF checkpoints, vocabulary 32000).
    assert get_preset(name).num_params(32000) == count


@pytest.mark.parametrize(("name", "target"), [("synth-3m", 3e6), ("synth-12m", 12e6), ("synth-36m", 36e6)])
def test_synthetic_sizes_near_their_names(name, target):
    n = get_preset(name).num_params(2 * 8192)
    assert abs(n - target) / target < 0.05, n


def test_tiny_is_below_one_million_and_uses_gqa():
    tiny = get_preset("tiny")
    assert tiny.num_params(1024) < 1_000_000
    assert tiny.num_query_groups < tiny.num_attention_heads


def test_parallel_defaults_of_cluster_presets():
    assert get_preset("70b").num_query_groups == 8 and get_preset("70b").default_tp == 8
    assert get_preset("13b").default_tp == 2
    assert get_preset("7b").default_tp == 1 and get_preset("1.3b").default_tp == 1
    assert set(PRESETS) == {"tiny", "synth-3m", "synth-12m", "synth-36m", "150m", "400m", "1.3b", "7b", "13b",
                            "70b"}
    for name, preset in PRESETS.items():
        assert preset.name == name


def test_flops_per_token_hand_computed():
    # tiny, V=1024, S=128. Per-layer matmul weights: qkv 8192 + proj 4096 + fc1 22528 + fc2 11264 = 46080.
    n_matmul = 2 * 46080 + 1024 * 64  # blocks + output layer; no input embedding, no norms
    assert get_preset("tiny").matmul_params(1024) == n_matmul == 157_696
    attention = 12 * 2 * 64 * 128  # 12 * L * (heads * head_dim) * S
    assert get_preset("tiny").flops_per_token(1024, 128) == 6 * n_matmul + attention == 1_142_784.0


def test_flops_attention_term_grows_linearly_with_sequence():
    p = get_preset("1.3b")
    delta = p.flops_per_token(50304, 2048) - p.flops_per_token(50304, 1024)
    assert delta == 12 * p.num_layers * p.hidden_size * 1024


def test_unknown_preset_lists_the_known_names():
    with pytest.raises(KeyError) as err:
        get_preset("3b")
    message = str(err.value)
    assert "'3b'" in message and "tiny" in message and "70b" in message


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"hidden_size": 65}, "num_attention_heads"),
        ({"num_query_groups": 3}, "num_query_groups"),
        ({"num_layers": 0}, "num_layers"),
        ({"hidden_size": 40, "num_attention_heads": 8}, "head dim"),
    ],
)
def test_invalid_shapes_are_rejected(change, field):
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(get_preset("tiny"), **change)


def test_bad_vocab_and_sequence_length_are_rejected():
    tiny = get_preset("tiny")
    with pytest.raises(ValueError, match="vocab_size"):
        tiny.num_params(0)
    with pytest.raises(ValueError, match="seq_len"):
        tiny.flops_per_token(1024, 0)


def test_preset_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_preset("tiny").num_layers = 3  # type: ignore[misc]
    assert isinstance(get_preset("tiny"), ModelPreset)
