"""Cross-lingual knowledge application (METHOD.md §5): facts learnt in the source language, asked in the target.

Inputs (both documented in docs/evaluation.md):

- facts, JSONL: ``{"subject": "Zabulek", "relation": "lives_in", "object": "Hebron"}`` per line. A
  (subject, relation) has exactly one object.
- templates, JSON: ``{"en": {"lives_in": ["{subject} dwelt in {object}.", ...], ...}, "de": {...}}``; every
  template holds ``{subject}`` and ``{object}`` once each. For ``"clone"`` (English-Clone) the templates are
  the English ones (a ``"clone"`` section, if present, is used instead); rendering "in Clone" means
  tokenising the English text and shifting the ids by V (`prealign_scale.eval.text`).

Training side: :func:`render_fact_documents` writes the facts with the *source-language* templates into
documents that the data tool mixes into the source-language training corpus only.

Query side (:func:`query_facts`): for each fact and each target-language template of its relation, every
candidate object (all objects the facts file pairs with that relation) is substituted, and the whole
sentence is scored by its log-likelihood (sum over its tokens after the first; the text before the object is
the same for all candidates). The query is right when the true object scores highest; ties share the credit
(1/k for a k-way tie at the top), so a constant model scores chance. ``accuracy`` is the mean over queries
(fact x template); ``per_relation`` and ``chance`` (mean of 1 / candidates) come with it.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass
from pathlib import Path

from prealign_scale.alignment.clone import CLONE, EN
from prealign_scale.eval.io import EvalInputError, line_of, read_json, read_jsonl
from prealign_scale.eval.text import TextEncoder, mark_clone
from prealign_scale.model.view import ModelView, sequence_logprobs

Templates = dict[str, dict[str, list[str]]]  # lang -> relation -> templates


@dataclass(frozen=True)
class Fact:
    subject: str
    relation: str
    object: str
    where: str = ""  # "path:line" of the fact, for error messages


def read_facts(path: str | Path) -> list[Fact]:
    """Facts from a JSONL file; errors name ``path:line`` (invalid JSON, missing or empty field, a
    (subject, relation) given two different objects)."""
    facts: list[Fact] = []
    seen: dict[tuple[str, str], Fact] = {}
    for lineno, rec in read_jsonl(path, {"subject": str, "relation": str, "object": str}):
        f = Fact(rec["subject"].strip(), rec["relation"].strip(), rec["object"].strip(), f"{path}:{lineno}")
        prev = seen.get((f.subject, f.relation))
        if prev is not None:
            if prev.object != f.object:
                raise EvalInputError(f"{f.where}: {f.subject!r} {f.relation!r} has object {f.object!r} here but "
                                     f"{prev.object!r} at {prev.where}; a (subject, relation) needs one object")
            continue
        seen[(f.subject, f.relation)] = f
        facts.append(f)
    return facts


def _template_fields(template: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]


def check_templates(obj: object, where: str, text: str = "") -> Templates:
    """Validate the templates structure (see the module docstring); errors name ``where:line``."""
    if not isinstance(obj, dict) or not obj:
        raise EvalInputError(f"{where}:1: expected an object {{lang: {{relation: [templates]}}}}")
    for lang, rels in obj.items():
        if not isinstance(rels, dict) or not rels:
            raise EvalInputError(f"{where}:{line_of(text, lang)}: {lang!r} must map relations to template lists")
        for rel, temps in rels.items():
            line = line_of(text, lang, rel)
            if not isinstance(temps, list) or not temps or not all(isinstance(t, str) for t in temps):
                raise EvalInputError(f"{where}:{line}: {lang}.{rel} must be a non-empty list of strings")
            for t in temps:
                try:
                    names = sorted(_template_fields(t))
                except ValueError as exc:
                    raise EvalInputError(f"{where}:{line_of(text, lang, rel, t)}: template {t!r}: {exc}") from exc
                if names != ["object", "subject"]:
                    raise EvalInputError(f"{where}:{line_of(text, lang, rel, t)}: template {t!r} must hold "
                                         f"{{subject}} and {{object}} once each (found {names})")
    return obj  # type: ignore[return-value]


def read_templates(path: str | Path) -> Templates:
    obj, text = read_json(path)
    return check_templates(obj, str(path), text)


def templates_for(templates: Templates, lang: str, relation: str, where: str = "") -> list[str]:
    """The templates of `relation` in `lang` ("clone": the Clone section, else the English one)."""
    at = f"{where}: " if where else ""
    section = templates.get(lang)
    if section is None and lang == CLONE:
        section = templates.get(EN)
    if section is None:
        raise EvalInputError(f"{at}no templates for language {lang!r} (the file has {sorted(templates)})")
    if relation not in section:
        raise EvalInputError(f"{at}relation {relation!r} has no {lang!r} template (known: {sorted(section)})")
    return section[relation]


def render(template: str, subject: str, obj: str) -> str:
    return template.replace("{subject}", subject).replace("{object}", obj)


def render_fact_documents(facts: list[Fact], templates: Templates, lang: str, repeats: int, seed: int,
                          facts_per_doc: int = 1) -> list[str]:
    """Training documents stating every fact `repeats` times in language `lang`.

    Repeat r of fact i uses template ``(i + r) % n_templates`` of its relation (so the paraphrases are used in
    turn); all ``len(facts) * repeats`` sentences are shuffled with ``random.Random(seed)`` and joined, space
    separated, into documents of `facts_per_doc` sentences. In ``"clone"`` the text is written in the marked
    Clone form ("§Zabulek §dwelt §in §Hebron.").
    """
    if repeats < 0 or facts_per_doc < 1:
        raise ValueError(f"need repeats >= 0 and facts_per_doc >= 1, got {repeats}, {facts_per_doc}")
    sentences = []
    for i, f in enumerate(facts):
        temps = templates_for(templates, lang, f.relation, f.where)
        for r in range(repeats):
            sentences.append(render(temps[(i + r) % len(temps)], f.subject, f.object))
    random.Random(seed).shuffle(sentences)
    docs = [" ".join(sentences[k : k + facts_per_doc]) for k in range(0, len(sentences), facts_per_doc)]
    return [mark_clone(d) for d in docs] if lang == CLONE else docs


def candidates_by_relation(facts: list[Fact]) -> dict[str, list[str]]:
    """Every object seen with each relation, sorted (the candidate answers of its queries)."""
    out: dict[str, set[str]] = {}
    for f in facts:
        out.setdefault(f.relation, set()).add(f.object)
    return {rel: sorted(objs) for rel, objs in sorted(out.items())}


def query_facts(view: ModelView, encoder: TextEncoder, facts: list[Fact], templates: Templates, lang: str, *,
                batch_size: int = 128, queries_of: list[Fact] | None = None) -> dict:
    """Accuracy of the facts queried in `lang` (see the module docstring). The candidates come from all
    `facts`; only the facts of `queries_of` (default: all) are asked."""
    encoder.check_lang(lang)
    cands = candidates_by_relation(facts)
    asked = facts if queries_of is None else queries_of
    queries = []  # (fact, template)
    for f in asked:
        for t in templates_for(templates, lang, f.relation, f.where):
            queries.append((f, t))
    texts: dict[str, int] = {}
    for f, t in queries:
        for o in cands[f.relation]:
            texts.setdefault(render(t, f.subject, o), len(texts))
    seqs = [encoder.encode(text, lang) for text in texts]
    scores = sequence_logprobs(view, seqs, batch_size, encoder.pad_id)
    credit: dict[str, list[float]] = {}
    chance: list[float] = []
    for f, t in queries:
        objs = cands[f.relation]
        s = [scores[texts[render(t, f.subject, o)]] for o in objs]
        best = max(s)
        top = [o for o, v in zip(objs, s) if v == best]
        credit.setdefault(f.relation, []).append((f.object in top) / len(top))
        chance.append(1.0 / len(objs))
    all_credit = [c for cs in credit.values() for c in cs]
    return {
        "lang": lang,
        "accuracy": sum(all_credit) / len(all_credit),
        "queries": len(all_credit),
        "facts": len(asked),
        "chance": sum(chance) / len(chance),
        "per_relation": {rel: sum(cs) / len(cs) for rel, cs in sorted(credit.items())},
    }
