"""HF LlamaForCausalLM export / import of the megatron GPTModel, and the TP shard merge (single process)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from prealign_scale.model.builder import build_gpt_model
from prealign_scale.model.hf_convert import (
    INDEX_NAME,
    WEIGHTS_NAME,
    HFCheckpointReader,
    check_hf_folder,
    export_hf,
    hf_to_megatron_state_dict,
    import_hf,
    load_megatron_state_dict,
    megatron_to_hf_state_dict,
    merge_tp_shards,
    split_tp_shards,
)
from prealign_scale.model.parallel import init_model_parallel
from prealign_scale.model.presets import get_preset

VOCAB = 1024
TINY = get_preset("tiny")


@pytest.fixture(scope="module")
def model(world1):
    """The tiny model with large, distinct weights (so that any layout mistake changes the logits a lot)."""
    init_model_parallel(1, seed=99)
    m = build_gpt_model(TINY, VOCAB, 128).eval()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "layernorm" in name:
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
    return m


def batch(b: int = 2, s: int = 24):
    g = torch.Generator().manual_seed(11)
    return torch.randint(0, VOCAB, (b, s), generator=g), torch.arange(s).expand(b, s)


def test_export_loads_in_transformers_with_equal_logits(model, tmp_path):
    from transformers import AutoModelForCausalLM

    out = export_hf(model.state_dict(), TINY, VOCAB, 128, tmp_path / "hf", bos_id=1, eos_id=2, pad_id=3)
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert type(hf).__name__ == "LlamaForCausalLM"
    ids, pos = batch()
    with torch.no_grad():
        ours = model(ids, pos, None)
        theirs = hf(input_ids=ids).logits
    assert ours.std() > 0.5  # the comparison is not between near-zero logits
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-4)

    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["rope_parameters"] == {"rope_type": "default", "rope_theta": 10000.0}
    assert config["rms_norm_eps"] == TINY.norm_eps
    assert (config["num_key_value_heads"], config["num_attention_heads"]) == (2, 4)
    assert config["tie_word_embeddings"] is False
    assert (config["vocab_size"], config["max_position_embeddings"]) == (VOCAB, 128)
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (1, 2, 3)
    assert (out / WEIGHTS_NAME).is_file() and not (out / INDEX_NAME).exists()


def test_right_padding_mask_matches_transformers(model, tmp_path):
    """megatron's boolean mask (True = blocked) with padded keys equals HF's attention_mask on real tokens."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(export_hf(model.state_dict(), TINY, VOCAB, 128, tmp_path)).eval()
    ids, pos = batch(2, 10)
    keep = torch.ones(2, 10, dtype=torch.long)
    keep[1, 6:] = 0  # the second row is 6 real tokens + 4 padding
    blocked = torch.triu(torch.ones(10, 10, dtype=torch.bool), diagonal=1)[None, None].repeat(2, 1, 1, 1)
    blocked |= (keep == 0)[:, None, None, :]
    with torch.no_grad():
        ours = model(ids, pos, blocked)
        theirs = hf(input_ids=ids, attention_mask=keep).logits
    real = keep.bool()
    torch.testing.assert_close(theirs[real], ours[real], rtol=0, atol=1e-4)


def test_import_gives_the_identical_megatron_state_dict(model, tmp_path):
    export_hf(model.state_dict(), TINY, VOCAB, 128, tmp_path)
    sd, preset, vocab = import_hf(tmp_path)
    ref = model.state_dict()
    assert (preset, vocab) == (TINY, VOCAB)
    assert list(sd) == list(ref)  # same keys, same order, _extra_state entries included
    for key, value in ref.items():
        if value is None:
            assert sd[key] is None, key
        else:
            assert sd[key].dtype == value.dtype and torch.equal(sd[key], value), key
    init_model_parallel(1, seed=1)
    fresh = build_gpt_model(preset, vocab, 128)
    fresh.load_state_dict(sd, strict=True)
    assert torch.equal(fresh.output_layer.weight, model.output_layer.weight)


def test_sharded_export_round_trip(model, tmp_path):
    from transformers import AutoModelForCausalLM

    export_hf(model.state_dict(), TINY, VOCAB, 128, tmp_path, max_shard_bytes=100_000)
    index = json.loads((tmp_path / INDEX_NAME).read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 2 and not (tmp_path / WEIGHTS_NAME).exists()
    assert index["metadata"]["total_size"] == 4 * TINY.num_params(VOCAB)
    sd, _, _ = import_hf(tmp_path)
    assert all(torch.equal(sd[k], v) for k, v in model.state_dict().items() if v is not None)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids, pos = batch()
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=ids).logits, model(ids, pos, None), rtol=0, atol=1e-4)


def test_tokenizer_files_are_copied(model, tmp_path):
    from transformers import AutoTokenizer

    from prealign_scale.text.tokenizer import train_bpe

    texts = ["In the beginning God created the heaven and the earth."] * 20
    train_bpe(texts, tmp_path / "tok", vocab_size=300, min_frequency=1)
    out = export_hf(model.state_dict(), TINY, VOCAB, 128, tmp_path / "hf", tokenizer_dir=tmp_path / "tok")
    assert (out / "tokenizer.json").read_bytes() == (tmp_path / "tok" / "tokenizer.json").read_bytes()
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.decode(tok(" the earth")["input_ids"]) == " the earth"
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        export_hf(model.state_dict(), TINY, VOCAB, 128, tmp_path / "hf2", tokenizer_dir=tmp_path)


def test_import_of_a_tied_transformers_checkpoint(world1, tmp_path):
    """Continue pretraining from an HF checkpoint that ties its embeddings (no lm_head.weight stored)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                         tie_word_embeddings=True, initializer_range=0.5)
    torch.manual_seed(0)
    hf = LlamaForCausalLM(config).eval()
    hf.save_pretrained(tmp_path)
    sd, preset, vocab = import_hf(tmp_path)
    assert preset.name == "tiny" and vocab == VOCAB  # the shape matches the tiny preset
    assert torch.equal(sd["output_layer.weight"], sd["embedding.word_embeddings.weight"])
    init_model_parallel(1, seed=1)
    ours = build_gpt_model(preset, vocab, 128).eval()
    ours.load_state_dict(sd)
    ids, pos = batch()
    with torch.no_grad():
        torch.testing.assert_close(ours(ids, pos, None), hf(input_ids=ids).logits, rtol=0, atol=1e-4)


def test_custom_shape_gets_a_derived_preset(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, rms_norm_eps=1e-6,
                         rope_parameters={"rope_type": "default", "rope_theta": 500000.0})
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    sd, preset, vocab = import_hf(tmp_path)
    assert preset.name == "hf-1l-32h" and vocab == 96
    assert (preset.num_query_groups, preset.ffn_hidden_size, preset.rotary_base, preset.norm_eps) == (
        1, 48, 500000.0, 1e-6)
    assert sd["decoder.layers.0.self_attention.linear_qkv.weight"].shape == (16 * (2 + 2), 32)


def test_qkv_and_fc1_layouts_by_hand():
    """Megatron's fused layouts: per query group [q heads, k, v]; fc1 = [gate; up]."""
    h, d = TINY.hidden_size, TINY.head_dim  # 4 heads, 2 groups: group g holds q heads 2g, 2g+1
    hf = {}
    rows = {name: torch.arange(n * d, dtype=torch.float32)[:, None].expand(n * d, h).clone()
            for name, n in (("q", 4), ("k", 2), ("v", 2))}
    for i in range(TINY.num_layers):
        p = f"model.layers.{i}."
        hf[p + "self_attn.q_proj.weight"] = rows["q"]
        hf[p + "self_attn.k_proj.weight"] = rows["k"] + 1000
        hf[p + "self_attn.v_proj.weight"] = rows["v"] + 2000
        hf[p + "self_attn.o_proj.weight"] = torch.zeros(h, h)
        hf[p + "mlp.gate_proj.weight"] = torch.full((TINY.ffn_hidden_size, h), 1.0)
        hf[p + "mlp.up_proj.weight"] = torch.full((TINY.ffn_hidden_size, h), 2.0)
        hf[p + "mlp.down_proj.weight"] = torch.zeros(h, TINY.ffn_hidden_size)
        hf[p + "input_layernorm.weight"] = torch.ones(h)
        hf[p + "post_attention_layernorm.weight"] = torch.ones(h)
    hf["model.embed_tokens.weight"] = torch.zeros(VOCAB, h)
    hf["model.norm.weight"] = torch.ones(h)
    hf["lm_head.weight"] = torch.zeros(VOCAB, h)
    sd = hf_to_megatron_state_dict(hf, TINY)
    qkv = sd["decoder.layers.0.self_attention.linear_qkv.weight"][:, 0]
    q_rows, k_rows, v_rows = torch.arange(4 * d), torch.arange(2 * d) + 1000, torch.arange(2 * d) + 2000
    expected = torch.cat([q_rows[: 2 * d], k_rows[:d], v_rows[:d], q_rows[2 * d:], k_rows[d:], v_rows[d:]])
    assert torch.equal(qkv, expected.float())
    fc1 = sd["decoder.layers.0.mlp.linear_fc1.weight"][:, 0]
    assert torch.equal(fc1, torch.cat([torch.full((176,), 1.0), torch.full((176,), 2.0)]))
    back = megatron_to_hf_state_dict(sd, TINY, VOCAB)
    assert sorted(back) == sorted(hf) and all(torch.equal(back[k], hf[k]) for k in hf)
    # Transformer Engine's layout (norms fused into the linears) converts to the same HF dict.
    te = hf_to_megatron_state_dict(hf, TINY, te_layout=True)
    assert "decoder.layers.1.mlp.linear_fc1.layer_norm_weight" in te and not any("_extra" in k for k in te)
    assert "decoder.layers.1.input_layernorm.weight" not in te
    back_te = megatron_to_hf_state_dict(te, TINY, VOCAB)
    assert all(torch.equal(back_te[k], hf[k]) for k in hf)


def test_tp_shards_merge_and_split(model):
    sd = {k: v for k, v in model.state_dict().items()}
    shards = split_tp_shards(sd, 2)
    ffn, h = TINY.ffn_hidden_size, TINY.hidden_size
    fc1 = sd["decoder.layers.0.mlp.linear_fc1.weight"]
    # Rank r holds [gate_r; up_r] (megatron's stride-2 split of fc1).
    torch.testing.assert_close(shards[1]["decoder.layers.0.mlp.linear_fc1.weight"],
                               torch.cat([fc1[ffn // 2: ffn], fc1[ffn + ffn // 2:]]), rtol=0, atol=0)
    assert shards[0]["decoder.layers.0.self_attention.linear_proj.weight"].shape == (h, h // 2)
    assert shards[1]["embedding.word_embeddings.weight"].shape == (VOCAB // 2, h)
    assert torch.equal(shards[1]["decoder.final_layernorm.weight"], sd["decoder.final_layernorm.weight"])
    merged = merge_tp_shards(shards)
    assert list(merged) == list(sd)
    assert all(v is None if sd[k] is None else torch.equal(v, sd[k]) for k, v in merged.items())


def test_conversion_errors_name_the_problem(model, tmp_path):
    sd = model.state_dict()
    with pytest.raises(ValueError, match=r"embedding.word_embeddings.weight: shape \(1024, 64\)"):
        megatron_to_hf_state_dict(sd, TINY, 2048)
    with pytest.raises(ValueError, match="linear_qkv.weight"):
        megatron_to_hf_state_dict(sd, dataclasses.replace(TINY, num_query_groups=4), VOCAB)
    with pytest.raises(KeyError, match="decoder.layers.2"):
        megatron_to_hf_state_dict(sd, dataclasses.replace(TINY, num_layers=3), VOCAB)
    with pytest.raises(FileNotFoundError, match="config.json"):
        import_hf(tmp_path)
    with pytest.raises(KeyError, match="linear_fc1.weight"):
        load_megatron_state_dict(model, {k: v for k, v in sd.items() if "layers.0.mlp.linear_fc1.weight" not in k})
    mixed = {**sd, "output_layer.weight": sd["output_layer.weight"].double()}
    with pytest.raises(ValueError, match="mixes dtypes"):
        export_hf(mixed, TINY, VOCAB, 128, tmp_path / "x")
    export_hf(sd, TINY, VOCAB, 128, tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="rope_type='linear'"):
        import_hf(tmp_path / "hf")


def test_checkpoint_reader_gives_the_imported_tensors(model, tmp_path):
    """The lazy per-block reader (model.init_hf) yields exactly import_hf's tensors: one file or shards,
    local or Transformer Engine layout."""
    export_hf(model.state_dict(), TINY, VOCAB, 128, tmp_path / "one")
    export_hf(model.state_dict(), TINY, VOCAB, 128, tmp_path / "sharded", max_shard_bytes=100_000)
    for folder in (tmp_path / "one", tmp_path / "sharded"):
        for te in (False, True):
            ref, _, _ = import_hf(folder, te_layout=te)
            reader = HFCheckpointReader(folder, TINY, te_layout=te)
            names = [k for k, v in ref.items() if v is not None]
            assert len(names) == TINY.num_layers * 6 + 3  # 2 norms + 4 linears per block
            for name in names:
                assert torch.equal(reader.tensor(name), ref[name]), (folder.name, te, name)
    with pytest.raises(KeyError, match="no weight for the model parameter 'decoder.layers.0.bogus.weight'"):
        reader.tensor("decoder.layers.0.bogus.weight")


def test_checkpoint_reader_of_a_tied_checkpoint(world1, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, tie_word_embeddings=True,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    reader = HFCheckpointReader(tmp_path, TINY)
    assert torch.equal(reader.tensor("output_layer.weight"), reader.tensor("embedding.word_embeddings.weight"))
    assert check_hf_folder(tmp_path, TINY) == VOCAB


def test_check_hf_folder_names_the_mismatch(model, tmp_path):
    export_hf(model.state_dict(), TINY, VOCAB, 128, tmp_path / "hf")
    assert check_hf_folder(tmp_path / "hf", TINY) == VOCAB
    with pytest.raises(ValueError, match=r"config.json: num_key_value_heads=2 but preset 'x' has num_query_groups=4"):
        check_hf_folder(tmp_path / "hf", dataclasses.replace(TINY, name="x", num_query_groups=4))
    with pytest.raises(ValueError, match=r"config.json: rope_theta=10000.0 but preset 'x' has rotary_base=500000.0"):
        check_hf_folder(tmp_path / "hf", dataclasses.replace(TINY, name="x", rotary_base=500000.0))
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, "mlp_bias": True}))
    with pytest.raises(ValueError, match="config.json mlp_bias=True; only False is supported"):
        check_hf_folder(tmp_path / "hf", TINY)
