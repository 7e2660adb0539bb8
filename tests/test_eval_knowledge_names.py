"""Facts with per-language names, the knowledge baselines, the shared-prompt scorer, and the layer of the fact files."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from eval_tiny import V, make_model, make_tokenizer

from prealign_scale.data.facts import read_facts, render_fact_documents
from prealign_scale.eval.io import EvalInputError
from prealign_scale.eval.knowledge import (
    candidates_by_relation,
    query_facts,
    score_candidates,
    score_candidates_reference,
)
from prealign_scale.eval.report import table_keys
from prealign_scale.eval.text import TextEncoder
from prealign_scale.model.view import HFModelView

TEMPLATES = {"en": {"lives_in": ["{subject} dwelt in {object} ."]}, "xx": {"lives_in": ["in {object} dwelt {subject} ."]}}
LINES = [{"subject": {"en": "Zab", "xx": "Kor"}, "relation": "lives_in", "object": {"en": "Bethel", "xx": "Hebron"}},
         {"subject": "Mil", "relation": "lives_in", "object": {"en": "Jericho", "xx": "Bethel"}},
         {"subject": "Sab", "relation": "lives_in", "object": {"en": "Jericho", "xx": "Bethel"}}]


def write(tmp_path, lines):
    f = tmp_path / "facts.jsonl"
    f.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return f


def test_per_language_names_render_and_candidates(tmp_path):
    facts = read_facts(write(tmp_path, LINES))
    assert candidates_by_relation(facts, "xx") == {"lives_in": ["Bethel", "Hebron"]}
    assert candidates_by_relation(facts, "en") == {"lives_in": ["Bethel", "Jericho"]}
    assert sorted(render_fact_documents(facts, TEMPLATES, "en", 1, 0)) == [
        "Mil dwelt in Jericho .", "Sab dwelt in Jericho .", "Zab dwelt in Bethel ."]
    assert render_fact_documents(facts[:1], TEMPLATES, "clone", 1, 0) == ["§Zab §dwelt §in §Bethel §."]
    with pytest.raises(EvalInputError, match=r"facts\.jsonl:1: subject .* has no 'de' name"):
        render_fact_documents(facts, {"de": TEMPLATES["en"]}, "de", 1, 0)
    bad = write(tmp_path, [{"subject": {"en": ""}, "relation": "r", "object": "x"}])
    with pytest.raises(EvalInputError, match=r"facts\.jsonl:1: field 'subject'"):
        read_facts(bad)


def test_baselines_and_shared_prompt_scores_equal_the_reference(tmp_path):
    tok = make_tokenizer(tmp_path / "tok")
    enc = TextEncoder(tok, V)
    view = HFModelView(make_model(2 * V, seed=11))
    facts = read_facts(write(tmp_path, LINES))
    new = query_facts(view, enc, facts, TEMPLATES, "xx")
    old = query_facts(view, enc, facts, TEMPLATES, "xx", scorer=score_candidates_reference)
    assert new == old
    assert new["majority"] == pytest.approx(2 / 3)  # Bethel is the most frequent xx object (2 of 3 facts)
    assert 0.0 <= new["subject_blind"] <= 1.0 and new["chance"] == 0.5
    groups = [[enc.encode(s, "en") for s in ("a b c", "a b d e", "a b")], [enc.encode(s, "en") for s in ("x y", "z y")]]
    ref, fast = score_candidates_reference(view, groups), score_candidates(view, groups)
    for r, f in zip(ref, fast):
        assert f == pytest.approx(r, abs=1e-4)


def test_sweep_table_columns_come_from_the_results():
    res = {"lm": {"shards": {"de": {"ppl": 9.0}, "en": {"ppl": 3.0}, "all": {"ppl": 5.0}}},
           "knowledge": {"en": {"accuracy": 0.5}, "de": {"accuracy": 0.2, "majority": 0.3, "subject_blind": 0.1}},
           "config": {"transfer_train_lang": "en"}}
    assert table_keys([res]) == ["ppl de", "ppl en", "knowledge de", "knowledge de majority",
                                 "knowledge de subject-blind", "knowledge en"]


def test_shard_config_reads_facts_without_the_eval_layer(tmp_path):
    code = ("import sys; import prealign_scale.data.build_config, prealign_scale.data.facts; "
            "print([m for m in sys.modules if m.startswith('prealign_scale.eval')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_shared_prompt_scores_equal_the_reference_on_mixed_groups():
    """Many groups at once: prompts of several lengths, continuations of lengths 0-4 mixed within a group, groups
    of different sizes, a group with no shared first token (the plain path), and a batch budget small enough
    that prompts and continuations are split over several forwards."""
    import random

    rng = random.Random(5)
    view = HFModelView(make_model(2 * V, seed=3))
    groups = []
    for _ in range(14):
        prompt = [rng.randrange(3, V) for _ in range(rng.randrange(1, 5))]
        groups.append([prompt + [rng.randrange(3, V) for _ in range(rng.randrange(0, 5))]
                       for _ in range(rng.randrange(1, 9))])
    groups.append([[5, 6, 7], [8, 6, 7]])
    for batch_size in (2, 64):
        ref, fast = score_candidates_reference(view, groups, batch_size), score_candidates(view, groups, batch_size)
        assert [len(f) for f in fast] == [len(g) for g in groups]
        for r, f in zip(ref, fast):
            assert f == pytest.approx(r, abs=1e-4)


def test_real_pair_eval_config_asks_the_translated_facts_in_both_languages():
    """configs/eval/real_pair_en_es.yaml lists the shipped translated facts; every fact has an English and a
    Spanish name for subject and object, every relation has templates in both, and the candidates differ by
    language (Jericho / Jericó)."""
    from pathlib import Path

    import yaml

    from prealign_scale.data.facts import read_templates, templates_for
    from prealign_scale.eval.run_eval import EvalConfig

    root = Path(__file__).resolve().parents[1]
    cfg = EvalConfig.from_dict(yaml.safe_load((root / "configs/eval/real_pair_en_es.yaml").read_text()))
    facts, temps = read_facts(root / cfg.facts), read_templates(root / cfg.templates)
    assert sorted(temps) == ["en", "es"] and cfg.knowledge_langs is None  # both languages are asked
    for f in facts:
        for lang in ("en", "es"):
            assert f.subject_in(lang) and f.object_in(lang) and templates_for(temps, lang, f.relation, f.where)
    assert "Jericó" in candidates_by_relation(facts, "es")["lives_in"]
    assert "Jericho" in candidates_by_relation(facts, "en")["lives_in"]
