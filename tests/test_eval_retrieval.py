"""Sentence retrieval: a model that represents Clone exactly like English retrieves every sentence, a parallel
file's bad lines are named."""

from __future__ import annotations

import json

import pytest
import torch
from eval_tiny import V, make_model, make_tokenizer

from prealign_scale.alignment.clone import mark_clone
from prealign_scale.eval.io import EvalInputError
from prealign_scale.eval.retrieval import read_parallel, sentence_retrieval
from prealign_scale.eval.text import TextEncoder
from prealign_scale.model.view import HFModelView

SENTENCES = ["the red cat", "the dog is old", "a big bird keeps fish .", "the new house of the father",
             "white sheep , black goats", "the cat"]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


def test_clone_copy_of_english_retrieves_every_sentence_at_every_layer(tok, tmp_path):
    model = make_model(2 * V, seed=8)
    with torch.no_grad():
        model.model.embed_tokens.weight[V:] = model.model.embed_tokens.weight[:V]
        model.lm_head.weight[V:] = model.lm_head.weight[:V]
    p = tmp_path / "par.jsonl"
    # the same sentence twice: one candidate, and either partner is right
    p.write_text("".join(json.dumps({"src": s, "tgt": mark_clone(s)}) + "\n" for s in SENTENCES + SENTENCES[:1]))
    res = sentence_retrieval(HFModelView(model), TextEncoder(tok, V), p, "en", "clone")
    assert res["src_lang"] == "en" and res["tgt_lang"] == "clone"
    assert res["pairs"] == 6 and res["candidates"] == 6
    assert res["acc"] == [1.0] * 4
    assert res["cos_true"] == pytest.approx([1.0] * 4, abs=1e-6)
    # an unaligned model does not: its Clone rows are unrelated to the English ones
    other = sentence_retrieval(HFModelView(make_model(2 * V, seed=9)), TextEncoder(tok, V), p, "en", "clone")
    assert other["acc"][0] < 1.0


@pytest.mark.parametrize("lines,line,what", [
    (['{"src": "a", "tgt": "b"}', '{"src": "a"}'], 2, "missing field 'tgt'"),
    (['{"src": "a", "tgt": "b"}', '', 'nope'], 3, "invalid JSON"),
    (['{"src": "a", "tgt": null}'], 1, "field 'tgt' must be a string"),
])
def test_bad_parallel_lines_name_file_and_line(tmp_path, lines, line, what):
    p = tmp_path / "par.jsonl"
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(EvalInputError, match=rf"par\.jsonl:{line}: {what}"):
        read_parallel(p)
