"""Knowledge application: fact files, templates, exact rendering, and querying against known / brute-force answers."""

from __future__ import annotations

import json
import random

import pytest
import torch
import torch.nn.functional as F
from eval_tiny import V, ids, make_model, make_tokenizer

from prealign_scale.data.facts import Fact, read_facts, read_templates, render_fact_documents
from prealign_scale.eval.io import EvalInputError
from prealign_scale.eval.knowledge import candidates_by_relation, query_facts
from prealign_scale.eval.text import TextEncoder
from prealign_scale.model.view import HFModelView

TEMPLATES = {"en": {"lives_in": ["{subject} dwelt in {object} .", "the house of {subject} is in {object} ."],
                    "keeps": ["{subject} keeps {object} ."]}}
FACTS = [Fact("Zab", "lives_in", "Bethel"), Fact("Kor", "lives_in", "Hebron"), Fact("Mil", "lives_in", "Jericho"),
         Fact("Zab", "keeps", "sheep"), Fact("Kor", "keeps", "sheep"), Fact("Mil", "keeps", "goats")]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


def test_read_facts_and_templates(tmp_path):
    f = tmp_path / "facts.jsonl"
    f.write_text("".join(json.dumps({"subject": x.subject, "relation": x.relation, "object": x.object}) + "\n"
                         for x in FACTS) + json.dumps({"subject": "Zab", "relation": "keeps", "object": "sheep"}) + "\n")
    facts = read_facts(f)
    assert [(x.subject, x.relation, x.object) for x in facts] == [(x.subject, x.relation, x.object) for x in FACTS]
    assert facts[0].where == f"{f}:1"
    assert candidates_by_relation(facts) == {"keeps": ["goats", "sheep"], "lives_in": ["Bethel", "Hebron", "Jericho"]}
    t = tmp_path / "t.json"
    t.write_text(json.dumps(TEMPLATES, indent=2))
    assert read_templates(t) == TEMPLATES


@pytest.mark.parametrize("lines,line,what", [
    (['{"subject": "A", "relation": "r", "object": "x"}', '{"subject": "B", "relation": "r"'], 2, "invalid JSON"),
    (['{"subject": "A", "relation": "r", "object": "x"}', '{"subject": "B", "object": "y"}'], 2,
     "missing field 'relation'"),
    (['{"subject": "A", "relation": "r", "object": ""}'], 1, "field 'object' is empty"),
    (['{"subject": "A", "relation": "r", "object": 3}'], 1, "field 'object' must be a string"),
    (['["A", "r", "x"]'], 1, "expected a JSON object"),
    (['{"subject": "A", "relation": "r", "object": "x"}', '', '{"subject": "A", "relation": "r", "object": "y"}'], 3,
     "'A' 'r' has object 'y' here but 'x' at"),
])
def test_bad_facts_name_file_and_line(tmp_path, lines, line, what):
    f = tmp_path / "facts.jsonl"
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(EvalInputError, match=rf"facts\.jsonl:{line}: {what}"):
        read_facts(f)


@pytest.mark.parametrize("text,line,what", [
    ('{\n  "en": {\n    "r": ["{subject} is {object}",\n          "{subject} only"]\n  }\n}\n', 4,
     r"must hold \{subject\} and \{object\} once each"),
    ('{\n  "en": {\n    "r": ["{subject} is {object}"],\n  }\n}\n', 4, "invalid JSON"),
    ('{\n  "en": {\n    "r": "{subject} is {object}"\n  }\n}\n', 3, "en.r must be a non-empty list"),
    ('{\n  "en": {\n    "r": ["{subject} {object} {subject}"]\n  }\n}\n', 3, "once each"),
    ('{\n  "en": []\n}\n', 2, "'en' must map relations"),
])
def test_bad_templates_name_file_and_line(tmp_path, text, line, what):
    f = tmp_path / "templates.json"
    f.write_text(text)
    with pytest.raises(EvalInputError, match=rf"templates\.json:{line}: .*{what}"):
        read_templates(f)


def test_render_fact_documents_exact():
    facts = FACTS[:2] + FACTS[3:4]
    docs = render_fact_documents(facts, TEMPLATES, "en", repeats=2, seed=3)
    # fact i, repeat r uses template (i + r) % n of its relation
    sentences = ["Zab dwelt in Bethel .", "the house of Zab is in Bethel .",
                 "the house of Kor is in Hebron .", "Kor dwelt in Hebron .",
                 "Zab keeps sheep .", "Zab keeps sheep ."]
    random.Random(3).shuffle(sentences)
    assert docs == sentences
    assert sorted(docs) == sorted(["Zab dwelt in Bethel .", "the house of Zab is in Bethel .",
                                   "the house of Kor is in Hebron .", "Kor dwelt in Hebron .",
                                   "Zab keeps sheep .", "Zab keeps sheep ."])
    two = render_fact_documents(facts, TEMPLATES, "en", repeats=2, seed=3, facts_per_doc=4)
    assert two == [" ".join(sentences[:4]), " ".join(sentences[4:])]
    assert render_fact_documents(facts[:1], TEMPLATES, "clone", 1, 0) == ["§Zab §dwelt §in §Bethel §."]
    with pytest.raises(EvalInputError, match="relation 'son_of' has no 'en' template"):
        render_fact_documents([Fact("A", "son_of", "B", "f.jsonl:7")], TEMPLATES, "en", 1, 0)


def constant_model(token: int):
    """A model whose next-token distribution is the same everywhere, with `token` far more likely than the
    rest (all other logits equal): blocks add nothing (zero output projections), every embedding row is the
    same vector, and only the LM-head row of `token` is non-zero."""
    model = make_model(2 * V, seed=0)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight[:] = 1.0
        model.lm_head.weight.zero_()
        model.lm_head.weight[token] = 1.0
    return model


def test_query_picks_the_object_the_model_prefers(tok):
    """The model prefers "sheep": the `keeps` queries are right exactly for the facts whose object is sheep
    (2 of 3); every `lives_in` query is a 3-way tie (credit 1/3 each)."""
    view = HFModelView(constant_model(ids("sheep")[0]))
    res = query_facts(view, TextEncoder(tok, V), FACTS, TEMPLATES, "en")
    assert res["per_relation"] == pytest.approx({"keeps": 2 / 3, "lives_in": 1 / 3})
    assert res["queries"] == 3 * 2 + 3 * 1
    assert res["accuracy"] == pytest.approx((3 * 2 * (1 / 3) + 2) / 9)
    assert res["chance"] == pytest.approx((6 * (1 / 3) + 3 * (1 / 2)) / 9)
    some = query_facts(view, TextEncoder(tok, V), FACTS, TEMPLATES, "en", queries_of=FACTS[4:])  # Kor, Mil keep
    assert some["facts"] == 2 and some["per_relation"] == {"keeps": 0.5} and some["chance"] == 0.5
    # in Clone the same preference must come from the Clone id: the English-preferring model only ties there
    clone = query_facts(view, TextEncoder(tok, V), FACTS, TEMPLATES, "clone")
    assert clone["per_relation"] == pytest.approx({"keeps": 1 / 2, "lives_in": 1 / 3})
    cview = HFModelView(constant_model(ids("sheep")[0] + V))
    assert query_facts(cview, TextEncoder(tok, V), FACTS, TEMPLATES, "clone")["per_relation"]["keeps"] == \
        pytest.approx(2 / 3)


def test_query_equals_brute_force_log_likelihood(tok):
    model = make_model(2 * V, seed=11)
    enc = TextEncoder(tok, V)
    for lang in ("en", "clone"):
        res = query_facts(HFModelView(model), enc, FACTS, TEMPLATES, lang, batch_size=4)
        cands = candidates_by_relation(FACTS)
        credit = {}
        for f in FACTS:
            for t in TEMPLATES["en"][f.relation]:
                scores = {}
                for o in cands[f.relation]:
                    x = torch.tensor([enc.encode(t.replace("{subject}", f.subject).replace("{object}", o), lang)])
                    with torch.no_grad():
                        logp = F.log_softmax(model(input_ids=x).logits[0].double(), -1)
                    scores[o] = float(logp[torch.arange(x.shape[1] - 1), x[0, 1:]].sum())
                credit.setdefault(f.relation, []).append(float(max(scores, key=scores.get) == f.object))
        want = {r: sum(c) / len(c) for r, c in credit.items()}
        assert res["per_relation"] == pytest.approx(want)
        assert 0 < sum(want.values()) < len(want)  # some right, some wrong: the comparison means something
