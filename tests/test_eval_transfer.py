"""Zero-shot transfer: the deterministic linear probe on separable features, end to end on a tiny model whose
Clone rows copy the English ones, the fine-tuned head, and bad labelled files."""

from __future__ import annotations

import json

import pytest
import torch
from eval_tiny import V, ids, make_model, make_tokenizer

from prealign_scale.alignment.clone import mark_clone
from prealign_scale.eval.io import EvalInputError
from prealign_scale.eval.text import TextEncoder
from prealign_scale.eval.transfer import (
    LabelledSet,
    finetune_transfer,
    linear_probe_transfer,
    read_labelled,
    train_linear_probe,
    transfer_eval,
)
from prealign_scale.model.view import HFModelView

ANIMALS = ["cat", "dog", "bird", "fish"]
COLOURS = ["red", "blue", "green", "black", "white"]


def separable(n: int, seed: int, shift: float = 0.0):
    """Three classes, each a tight cluster around its own centre (linearly separable)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[4.0, 0.0, 0.0, 0.0], [0.0, 4.0, 0.0, 0.0], [0.0, 0.0, 4.0, 0.0]])
    y = torch.arange(n) % 3
    return centres[y] + shift + 0.5 * torch.randn(n, 4, generator=g), y


def test_linear_probe_separates_separable_features_deterministically():
    x, y = separable(60, 0)
    xt, yt = separable(30, 1)
    p = train_linear_probe(x, y, 3)
    assert bool((p.predict(x) == y).all()) and bool((p.predict(xt) == yt).all())
    q = train_linear_probe(x, y, 3)
    assert torch.equal(p.weight, q.weight) and torch.equal(p.bias, q.bias)


def passages(seed: int, n: int) -> LabelledSet:
    g = torch.Generator().manual_seed(seed)
    texts, labels = [], []
    for k in range(n):
        label = "animal" if k % 2 == 0 else "colour"
        pool = ANIMALS if label == "animal" else COLOURS
        words = [pool[int(i)] for i in torch.randint(len(pool), (3,), generator=g)]
        texts.append("the " + " ".join(words) + " .")
        labels.append(label)
    return LabelledSet(texts, labels)


def aligned_model():
    """Animal words' embeddings near +u, colour words' near -u, everything else small; Clone rows (input and
    output) are exact copies of the English rows, so Clone text is represented exactly like English text."""
    model = make_model(2 * V, seed=7)
    g = torch.Generator().manual_seed(0)
    u = torch.randn(16, generator=g)
    with torch.no_grad():
        emb = model.model.embed_tokens.weight
        emb[:] = 0.05 * torch.randn(emb.shape, generator=g)
        for w in ANIMALS:
            emb[ids(w)[0]] = u + 0.1 * torch.randn(16, generator=g)
        for w in COLOURS:
            emb[ids(w)[0]] = -u + 0.1 * torch.randn(16, generator=g)
        emb[V:] = emb[:V]
        model.lm_head.weight[V:] = model.lm_head.weight[:V]
    return model


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


def test_linear_probe_transfer_to_a_perfect_clone(tok):
    view = HFModelView(aligned_model())
    train, test = passages(0, 40), passages(1, 20)
    clone_test = LabelledSet([mark_clone(t) for t in test.texts], test.labels)
    res = linear_probe_transfer(view, TextEncoder(tok, V), train, "en", {"en": test, "clone": clone_test},
                                layer="embedding")
    assert res["layers"][0] == "embedding" and len(res["acc"]["en"]) == 4
    assert res["source"] == 1.0 and res["target"] == {"clone": 1.0}  # separable at the embedding layer
    assert res["acc"]["clone"] == res["acc"]["en"]  # identical representations at every layer


def test_finetuned_head_learns_the_source_task_deterministically(tok):
    view = HFModelView(aligned_model())
    enc = TextEncoder(tok, V)
    train, test = passages(0, 40), passages(1, 20)
    tests = {"en": test, "clone": LabelledSet([mark_clone(t) for t in test.texts], test.labels)}
    before = [p.clone() for p in view.model.parameters()]
    a = finetune_transfer(view, enc, train, "en", tests, epochs=3, lr=3e-3, batch_size=8, seed=1)
    b = finetune_transfer(view, enc, train, "en", tests, epochs=3, lr=3e-3, batch_size=8, seed=1)
    assert a == b
    assert a["source"] == 1.0 and set(a["target"]) == {"clone"}
    assert all(torch.equal(p, q) for p, q in zip(before, view.model.parameters()))  # the model is not changed


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_transfer_eval_on_files(tok, tmp_path):
    train, test = passages(0, 40), passages(1, 20)
    tr = write_jsonl(tmp_path / "train.jsonl", [{"text": t, "label": y} for t, y in zip(train.texts, train.labels)])
    te = write_jsonl(tmp_path / "test.jsonl", [{"text": t, "label": y} for t, y in zip(test.texts, test.labels)])
    tc = write_jsonl(tmp_path / "test.clone.jsonl",
                     [{"text": mark_clone(t), "label": y} for t, y in zip(test.texts, test.labels)])
    res = transfer_eval(HFModelView(aligned_model()), TextEncoder(tok, V), tr, "en", {"en": te, "clone": tc},
                        finetune=False, probe_layer="embedding")
    assert res["labels"] == ["animal", "colour"] and res["train"] == 40 and res["tests"] == {"en": 20, "clone": 20}
    assert res["majority"] == {"en": 0.5, "clone": 0.5}
    assert res["linear_probe"]["source"] == 1.0 and res["linear_probe"]["target"] == {"clone": 1.0}
    assert "finetune" not in res


@pytest.mark.parametrize("records,line,what", [
    ([{"text": "a", "label": "x"}, {"text": "b", "label": "z"}], 2, "unknown label 'z'"),
    ([{"text": "a", "label": "x"}, {"text": "b"}], 2, "missing field 'label'"),
    ([{"text": "a", "label": "x"}, {"text": "", "label": "x"}], 2, "field 'text' is empty"),
    ([{"text": "a", "label": ["x"]}], 1, "field 'label' must be a string or an integer"),
])
def test_bad_labelled_files_name_file_and_line(tmp_path, records, line, what):
    p = write_jsonl(tmp_path / "test.jsonl", records)
    with pytest.raises(EvalInputError, match=rf"test\.jsonl:{line}: {what}"):
        read_labelled(p, ["x", "y"])


def test_integer_labels_are_read_as_strings(tmp_path):
    p = write_jsonl(tmp_path / "t.jsonl", [{"text": "a", "label": 3}, {"text": "b", "label": "3"}])
    assert read_labelled(p).labels == ["3", "3"]
