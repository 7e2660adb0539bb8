"""The training-time view: the probe on megatron's GPTModel (hooks) equals the probe on its HF export."""

from __future__ import annotations

import pytest
import torch

from prealign_scale.alignment.probe import ProbePair, ProbeSet, run_probe
from prealign_scale.alignment.word_vectors import pooled_vectors
from prealign_scale.model.view import HFModelView, MegatronView, load_hf_model

VOCAB = 128


@pytest.fixture(scope="module")
def megatron_model(world1):  # world1: tests/conftest.py
    from prealign_scale.model.builder import build_gpt_model
    from prealign_scale.model.parallel import init_model_parallel
    from prealign_scale.model.presets import get_preset

    init_model_parallel(1, seed=7)
    model = build_gpt_model(get_preset("tiny"), VOCAB, 64).eval()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g) if "layernorm" in name
                    else torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
    return model


def test_megatron_view_matches_the_hf_export(megatron_model, tmp_path):
    from prealign_scale.model.hf_convert import export_hf
    from prealign_scale.model.presets import get_preset

    hf_dir = export_hf(megatron_model.state_dict(), get_preset("tiny"), VOCAB, 64, tmp_path / "hf")
    mv, hv = MegatronView(megatron_model), HFModelView(load_hf_model(hf_dir))
    assert mv.num_layers == hv.num_layers == 2 and mv.vocab_size == hv.vocab_size == VOCAB
    seqs = [[5, 9, 17], [3], [40, 41], [100, 7, 8, 9]]
    a, b = pooled_vectors(mv, seqs, batch_size=3), pooled_vectors(hv, seqs, batch_size=3)
    assert a.shape == (4, 4, 64) and a.std() > 0.1
    torch.testing.assert_close(a, b, rtol=0, atol=1e-4)
    ids = torch.tensor([[5, 9, 17, 2]])
    with torch.no_grad():
        torch.testing.assert_close(mv.logits(ids), hv.logits(ids), rtol=0, atol=1e-4)
    pairs = [ProbePair((i,), (i + 50,)) for i in range(1, 9)] + [ProbePair((60, 61), (10, 11, 12))]
    ra, rb = run_probe(mv, ProbeSet({"g": pairs})), run_probe(hv, ProbeSet({"g": pairs}))
    assert ra["layers"] == rb["layers"]
    for stat in ("acc", "cos_true", "cos_random"):
        assert ra["groups"]["g"][stat] == pytest.approx(rb["groups"]["g"][stat], abs=1e-5)
    assert not megatron_model.training and len(megatron_model.embedding._forward_hooks) == 0  # hooks removed
