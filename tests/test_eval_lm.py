"""Per-language loss / perplexity: shards (stored targets, per-segment languages) and text files, by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import webdataset as wds
from eval_tiny import V, make_model, make_tokenizer

from prealign_scale.data.shard_format import IGNORE_INDEX, Sample, encode_sample, sample_key, shard_name
from prealign_scale.eval.io import EvalInputError
from prealign_scale.eval.lm_eval import document_windows, shard_lm_eval, text_lm_eval
from prealign_scale.eval.text import TextEncoder
from prealign_scale.model.view import HFModelView

SEQ = 10


def samples() -> list[Sample]:
    """Two samples, three documents, two languages; targets deliberately not the inputs shifted."""
    ids0 = np.array([5, 6, 7, 1, 20, 21, 22, 23, 24, 25], dtype=np.uint32)
    tgt0 = np.array([6, 9, 1, IGNORE_INDEX, 21, 22, IGNORE_INDEX, 30, 25, 26], dtype=np.int32)
    seg0 = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1], dtype=np.uint16)
    ids1 = np.array([26, 27, 1, 40, 41, 42, 43, 44, 45, 46], dtype=np.uint32)
    tgt1 = np.array([27, 1, IGNORE_INDEX, 41, 42, 43, 44, 45, 46, 47], dtype=np.int32)
    seg1 = np.array([0, 0, 0, 1, 1, 1, 1, 1, 1, 1], dtype=np.uint16)
    return [Sample(ids0, tgt0, seg0, ["en", "clone"], ["en/0", "clone/0"], 0),
            Sample(ids1, tgt1, seg1, ["clone", "en"], ["clone/0", "en/1"], 0)]


def write_shard_folder(folder, items) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with wds.TarWriter(str(folder / shard_name(0)), mtime=0) as w:
        for i, s in enumerate(items):
            w.write(encode_sample(sample_key(0, i), s))
    manifest = {"format_version": 1, "seq_len": SEQ, "vocab_size": 2 * V, "languages": ["clone", "en"], "eos_id": 1,
                "shards": [{"name": shard_name(0), "samples": len(items)}]}
    (folder / "manifest.json").write_text(json.dumps(manifest))


def hand_loss(model, pieces):
    """pieces: (ids, targets, lang per position); returns {lang: (nll sum, count)} computed one piece at a time."""
    out = {}
    for x, y, langs in pieces:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([list(map(int, x))])).logits[0]
        for t, target in enumerate(y):
            if target == IGNORE_INDEX:
                continue
            nll = -float(F.log_softmax(logits[t].double(), -1)[int(target)])
            acc = out.setdefault(langs[t], [0.0, 0])
            acc[0] += nll
            acc[1] += 1
    return out


def test_shard_loss_per_language_equals_hand_computation(tmp_path):
    model = make_model(2 * V, seed=4)
    write_shard_folder(tmp_path / "shards", samples())
    s0, s1 = samples()
    # document attention: each segment alone, positions from 0
    pieces = [(s0.input_ids[:4], s0.targets[:4], ["en"] * 4), (s0.input_ids[4:], s0.targets[4:], ["clone"] * 6),
              (s1.input_ids[:3], s1.targets[:3], ["clone"] * 3), (s1.input_ids[3:], s1.targets[3:], ["en"] * 7)]
    want = hand_loss(model, pieces)
    assert want["en"][1] == 3 + 7 and want["clone"][1] == 5 + 2
    got = shard_lm_eval(HFModelView(model), tmp_path / "shards", batch_size=3)
    for lang in ("en", "clone"):
        assert got[lang]["tokens"] == want[lang][1]
        assert got[lang]["loss"] == pytest.approx(want[lang][0] / want[lang][1], rel=1e-6)
        assert got[lang]["ppl"] == pytest.approx(math.exp(want[lang][0] / want[lang][1]), rel=1e-6)
    total = sum(w[0] for w in want.values()) / sum(w[1] for w in want.values())
    assert got["all"]["loss"] == pytest.approx(total, rel=1e-6) and got["samples"] == 2
    # only the first sample
    first = shard_lm_eval(HFModelView(model), tmp_path / "shards", max_samples=1)
    want1 = hand_loss(model, pieces[:2])
    assert first["en"]["loss"] == pytest.approx(want1["en"][0] / want1["en"][1], rel=1e-6)
    assert first["samples"] == 1


def test_shard_loss_without_document_attention_runs_whole_samples(tmp_path):
    model = make_model(2 * V, seed=5)
    write_shard_folder(tmp_path / "shards", samples())
    s0, s1 = samples()
    pieces = [(s0.input_ids, s0.targets, ["en"] * 4 + ["clone"] * 6),
              (s1.input_ids, s1.targets, ["clone"] * 3 + ["en"] * 7)]
    want = hand_loss(model, pieces)
    got = shard_lm_eval(HFModelView(model), tmp_path / "shards", doc_attention=False)
    for lang in ("en", "clone"):
        assert got[lang]["loss"] == pytest.approx(want[lang][0] / want[lang][1], rel=1e-6)


def test_shard_ids_outside_the_model_vocabulary_are_refused(tmp_path):
    write_shard_folder(tmp_path / "shards", samples())
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        shard_lm_eval(HFModelView(make_model(40, seed=0)), tmp_path / "shards")


def test_document_windows_predict_every_token_once():
    assert document_windows([1, 2, 3, 4, 5, 6], 2) == [([1, 2], [2, 3]), ([3, 4], [4, 5]), ([5], [6])]
    assert document_windows([1, 2, 3], 8) == [([1, 2], [2, 3])]
    assert document_windows([7], 4) == []


def test_text_file_loss_equals_hand_computation_with_eos_and_clone(tmp_path):
    tok = make_tokenizer(tmp_path / "tok")
    enc = TextEncoder(tok, V)
    model = make_model(2 * V, seed=6)
    (tmp_path / "en.txt").write_text("the red cat . the dog\n\nbig old dog\n")
    (tmp_path / "clone.txt").write_text("§the §red §cat §. §the §dog\n\n§big §old §dog\n")  # the marked form
    en_docs = [tok.encode(t, add_special_tokens=False) + [1] for t in ("the red cat . the dog", "big old dog")]
    for lang in ("en", "clone"):
        got = text_lm_eval(HFModelView(model), enc, tmp_path / f"{lang}.txt", lang, max_len=3)
        pieces = []
        for d in en_docs:
            d = [i + V if lang == "clone" and i >= 3 else i for i in d]  # specials (eos) stay
            pieces += [(x, y, [lang] * len(x)) for x, y in document_windows(d, 3)]
        want = hand_loss(model, pieces)[lang]
        assert got["docs"] == 2 and got["tokens"] == 6 + 3 == want[1]
        assert got["loss"] == pytest.approx(want[0] / want[1], rel=1e-6)


def test_text_jsonl_errors_name_file_and_line(tmp_path):
    tok = make_tokenizer(tmp_path / "tok")
    f = tmp_path / "docs.jsonl"
    f.write_text('{"text": "the cat"}\n{"text": 3}\n')
    with pytest.raises(EvalInputError, match=r"docs\.jsonl:2"):
        text_lm_eval(HFModelView(make_model(V)), TextEncoder(tok), f, "en")
