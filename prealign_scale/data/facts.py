"""Synthetic facts for the knowledge probe (METHOD.md §5): the fact and template files, and the training documents.

Both the shard builder (which mixes the fact documents into the source-language corpus) and the evaluator
(`prealign_scale.eval.knowledge`, which asks the facts in the target languages) read these files, so they
live here, below both.

- facts, JSONL, one fact per line. Subject and object are either a plain string (the same text in every
  language) or a map ``{lang: text}`` of per-language names::

      {"subject": "Zabulek", "relation": "lives_in", "object": "Hebron"}
      {"subject": {"en": "Germany", "de": "Deutschland"}, "relation": "capital", "object": "Berlin"}

  A (subject, relation) has exactly one object. A name map needs an entry for every language the fact is
  rendered or asked in (``"clone"`` falls back to the ``"en"`` entry: a Clone name is the English one).
- templates, JSON: ``{"en": {"lives_in": ["{subject} dwelt in {object}.", ...], ...}, "de": {...}}``; every
  template holds ``{subject}`` and ``{object}`` once each. For ``"clone"`` (English-Clone) the templates are
  the English ones (a ``"clone"`` section, if present, is used instead).

:func:`render_fact_documents` writes every fact with one language's templates and names into documents; the
shard builder calls it for the source language only. In ``"clone"`` the text is the marked Clone form.
Errors name ``path:line`` (:class:`~prealign_scale.data.input_files.InputFileError`).
"""

from __future__ import annotations

import json
import random
import string
from dataclasses import dataclass
from pathlib import Path

from prealign_scale.alignment.clone import CLONE, EN, mark_clone
from prealign_scale.data.input_files import InputFileError, line_of, read_json, read_jsonl

Templates = dict[str, dict[str, list[str]]]  # lang -> relation -> templates
Names = str | dict[str, str]  # one text for every language, or lang -> text


@dataclass(frozen=True)
class Fact:
    subject: Names
    relation: str
    object: Names
    where: str = ""  # "path:line" of the fact, for error messages

    def subject_in(self, lang: str | None) -> str:
        return name_in(self.subject, lang, f"{self.where}: subject" if self.where else "subject")

    def object_in(self, lang: str | None) -> str:
        return name_in(self.object, lang, f"{self.where}: object" if self.where else "object")


def name_in(names: Names, lang: str | None, what: str = "name") -> str:
    """The text of `names` in `lang`: a plain string is the same in every language; a map gives its entry
    (``"clone"`` falls back to ``"en"``). ``lang=None`` accepts plain strings only."""
    if isinstance(names, str):
        return names
    if lang in names:
        return names[lang]
    if lang == CLONE and EN in names:
        return names[EN]
    raise InputFileError(f"{what} {names!r} has no {lang!r} name (it has {sorted(names)}); give every "
                         f"language the facts are rendered or asked in")


def _names(value: str | dict, where: str, key: str) -> Names:
    """A checked subject / object value: a stripped string, or a non-empty map of non-empty strings."""
    if isinstance(value, str):
        return value.strip()
    if not value:
        raise InputFileError(f"{where}: field {key!r} is an empty map (need {{lang: text}})")
    out = {}
    for lang, text in value.items():
        if not isinstance(text, str) or not text.strip():
            raise InputFileError(f"{where}: field {key!r}: the {lang!r} name must be a non-empty string, "
                                 f"got {text!r}")
        out[lang] = text.strip()
    return out


def _key(names: Names) -> str:
    """A hashable identity of a subject / object (name maps compare as a whole)."""
    return names if isinstance(names, str) else json.dumps(names, sort_keys=True, ensure_ascii=False)


def read_facts(path: str | Path) -> list[Fact]:
    """Facts from a JSONL file; errors name ``path:line`` (invalid JSON, missing or empty field, a bad name
    map, a (subject, relation) given two different objects). Repeated facts are kept once."""
    facts: list[Fact] = []
    seen: dict[tuple[str, str], Fact] = {}
    for lineno, rec in read_jsonl(path, {"subject": (str, dict), "relation": str, "object": (str, dict)}):
        where = f"{path}:{lineno}"
        f = Fact(_names(rec["subject"], where, "subject"), rec["relation"].strip(),
                 _names(rec["object"], where, "object"), where)
        prev = seen.get((_key(f.subject), f.relation))
        if prev is not None:
            if _key(prev.object) != _key(f.object):
                raise InputFileError(f"{f.where}: {f.subject!r} {f.relation!r} has object {f.object!r} here but "
                                     f"{prev.object!r} at {prev.where}; a (subject, relation) needs one object")
            continue
        seen[(_key(f.subject), f.relation)] = f
        facts.append(f)
    return facts


def _template_fields(template: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]


def check_templates(obj: object, where: str, text: str = "") -> Templates:
    """Validate the templates structure (see the module docstring); errors name ``where:line``."""
    if not isinstance(obj, dict) or not obj:
        raise InputFileError(f"{where}:1: expected an object {{lang: {{relation: [templates]}}}}")
    for lang, rels in obj.items():
        if not isinstance(rels, dict) or not rels:
            raise InputFileError(f"{where}:{line_of(text, lang)}: {lang!r} must map relations to template lists")
        for rel, temps in rels.items():
            line = line_of(text, lang, rel)
            if not isinstance(temps, list) or not temps or not all(isinstance(t, str) for t in temps):
                raise InputFileError(f"{where}:{line}: {lang}.{rel} must be a non-empty list of strings")
            for t in temps:
                try:
                    names = sorted(_template_fields(t))
                except ValueError as exc:
                    raise InputFileError(f"{where}:{line_of(text, lang, rel, t)}: template {t!r}: {exc}") from exc
                if names != ["object", "subject"]:
                    raise InputFileError(f"{where}:{line_of(text, lang, rel, t)}: template {t!r} must hold "
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
        raise InputFileError(f"{at}no templates for language {lang!r} (the file has {sorted(templates)})")
    if relation not in section:
        raise InputFileError(f"{at}relation {relation!r} has no {lang!r} template (known: {sorted(section)})")
    return section[relation]


def render(template: str, subject: str, obj: str) -> str:
    return template.replace("{subject}", subject).replace("{object}", obj)


def render_fact_documents(facts: list[Fact], templates: Templates, lang: str, repeats: int, seed: int,
                          facts_per_doc: int = 1) -> list[str]:
    """Training documents stating every fact `repeats` times in language `lang` (its templates and names).

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
        subject, obj = f.subject_in(lang), f.object_in(lang)
        for r in range(repeats):
            sentences.append(render(temps[(i + r) % len(temps)], subject, obj))
    random.Random(seed).shuffle(sentences)
    docs = [" ".join(sentences[k : k + facts_per_doc]) for k in range(0, len(sentences), facts_per_doc)]
    return [mark_clone(d) for d in docs] if lang == CLONE else docs
