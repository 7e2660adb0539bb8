"""The shipped evaluation sets (data/eval/), built deterministically from the embedded KJV corpus.

- **Genre classification** (the zero-shot transfer task): passages of 2 or 3 consecutive sentences labelled
  with their chapter's ``genre`` (law, history, poetry, prophets, gospels, epistles). Training passages come
  from ``kjv_train``, test passages from ``kjv_heldout`` (chapters no training document holds), a balanced
  number per genre. The Clone test set is the English test set written in the marked Clone form.
- **Parallel sentences** (sentence retrieval): held-out sentences, English source and Clone target.
- **Synthetic facts** (knowledge application): invented subjects (names built from syllables that never
  occur in the corpus), each with one object per relation drawn from words the corpus knows well, and
  several English templates per relation.

`write_eval_sets` writes all of them; `write_fact_corpus` renders the facts into a training corpus file
(JSONL ``{"text"}``) for the shard builder's source language.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from prealign_scale.alignment.clone import mark_clone
from prealign_scale.data.facts import Fact, read_facts, read_templates, render_fact_documents

GENRES = ("law", "history", "poetry", "prophets", "gospels", "epistles")

FACT_OBJECTS: dict[str, list[str]] = {
    "lives_in": ["Bethel", "Hebron", "Jericho", "Gilead", "Babylon", "Shiloh", "Samaria", "Moab", "Edom",
                 "Damascus", "Bethlehem", "Galilee"],
    "son_of": ["Abraham", "Isaac", "Jacob", "Joseph", "Moses", "Aaron", "David", "Saul", "Samuel", "Jesse",
               "Boaz", "Elijah"],
    "keeps": ["sheep", "goats", "camels", "oxen", "asses", "horses", "cattle", "vineyards", "lambs", "flocks",
              "swine", "doves"],
}
FACT_TEMPLATES: dict[str, dict[str, list[str]]] = {
    "en": {
        "lives_in": ["{subject} dwelt in {object}.", "{subject} lives in {object}.",
                     "The house of {subject} is in {object}."],
        "son_of": ["{subject} is the son of {object}.", "{subject} was the son of {object}.",
                   "The father of {subject} is {object}."],
        "keeps": ["{subject} keeps {object}.", "{subject} kept the {object}.",
                  "The {object} of {subject} are many."],
    }
}
_ONSETS = ("b", "d", "g", "k", "l", "m", "n", "r", "s", "t", "v", "z", "sh", "th")
_VOWELS = ("a", "e", "i", "o", "u")
_CODAS = ("", "", "n", "l", "r", "k", "m")
_SENTENCE_END = re.compile(r"(?<=[.?!])\s+")
_WORD = re.compile(r"[A-Za-z]+")


def read_corpus(path: str | Path) -> list[dict]:
    from prealign_scale.text.corpus import iter_documents

    return [{"text": d.text, **d.fields} for d in iter_documents(path)]


def corpus_words(docs: list[dict]) -> set[str]:
    """Lower-cased words of the documents (to keep invented names out of the corpus)."""
    return {w.lower() for d in docs for w in _WORD.findall(d["text"])}


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def passages(text: str, max_words: int = 90) -> list[str]:
    """Consecutive, non-overlapping spans of 2 and 3 sentences (alternating); spans over `max_words` are
    dropped."""
    sents = split_sentences(text)
    out, i, k = [], 0, 2
    while i + k <= len(sents):
        span = " ".join(sents[i : i + k])
        if len(span.split()) <= max_words:
            out.append(span)
        i += k
        k = 5 - k
    return out


def genre_passages(docs: list[dict], per_genre: int, seed: int) -> list[dict]:
    """A balanced, shuffled sample of ``{"text", "label", "source"}`` passages (min(per_genre, available)
    per genre, the same count for every genre)."""
    by_genre: dict[str, list[dict]] = {g: [] for g in GENRES}
    for d in docs:
        genre = d.get("genre")
        if genre not in by_genre:
            raise ValueError(f"document {d.get('id')!r}: genre {genre!r} is not one of {GENRES}")
        for n, p in enumerate(passages(d["text"])):
            by_genre[genre].append({"text": p, "label": genre, "source": f"{d.get('id')}#{n}"})
    rng = random.Random(seed)
    k = min(per_genre, *(len(v) for v in by_genre.values()))
    chosen = [p for g in GENRES for p in rng.sample(by_genre[g], k)]
    rng.shuffle(chosen)
    return chosen


def parallel_sentences(docs: list[dict], n: int, seed: int, min_words: int = 5, max_words: int = 40) -> list[dict]:
    """``{"src": English, "tgt": marked Clone}`` for `n` distinct held-out sentences (seeded sample)."""
    sents = sorted({s for d in docs for s in split_sentences(d["text"]) if min_words <= len(s.split()) <= max_words})
    picked = random.Random(seed).sample(sents, min(n, len(sents)))
    return [{"src": s, "tgt": mark_clone(s)} for s in picked]


def invent_names(n: int, seed: int, avoid: set[str]) -> list[str]:
    """`n` distinct capitalised names of 2-3 syllables, none of them a word of `avoid` (lower-case)."""
    rng = random.Random(seed)
    names: list[str] = []
    seen = set()
    for _ in range(200 * n):
        if len(names) == n:
            break
        name = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)
                       for _ in range(rng.choice((2, 3))))
        if name in seen or name in avoid or len(name) < 4:
            continue
        seen.add(name)
        names.append(name.capitalize())
    if len(names) < n:
        raise ValueError(f"invent_names: could only make {len(names)} of {n} names")
    return names


def synthetic_facts(n_subjects: int, seed: int, avoid: set[str]) -> list[dict]:
    """One fact per (invented subject, relation), the object drawn uniformly from `FACT_OBJECTS`."""
    rng = random.Random(seed + 1)
    facts = []
    for subject in invent_names(n_subjects, seed, avoid):
        for rel, objs in FACT_OBJECTS.items():
            facts.append({"subject": subject, "relation": rel, "object": rng.choice(objs)})
    return facts


def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def write_eval_sets(out_dir: str | Path, train_corpus: str | Path, heldout_corpus: str | Path, *, seed: int = 0,
                    train_per_genre: int = 100, test_per_genre: int = 30, parallel: int = 300,
                    subjects: int = 200) -> dict:
    """Write every shipped set into `out_dir`; returns {file name: record count}."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: is a file, not a folder (the output folder of the evaluation sets)")
    train_docs, test_docs = read_corpus(train_corpus), read_corpus(heldout_corpus)
    train = genre_passages(train_docs, train_per_genre, seed)
    test = genre_passages(test_docs, test_per_genre, seed)
    files = {
        "genre_train.en.jsonl": train,
        "genre_test.en.jsonl": test,
        "genre_test.clone.jsonl": [{**r, "text": mark_clone(r["text"])} for r in test],
        "parallel.en-clone.jsonl": parallel_sentences(test_docs, parallel, seed),
        "facts.jsonl": synthetic_facts(subjects, seed, corpus_words(train_docs + test_docs)),
    }
    for name, records in files.items():
        _write_jsonl(out / name, records)
    (out / "fact_templates.json").write_text(json.dumps(FACT_TEMPLATES, indent=2) + "\n")
    counts = {name: len(r) for name, r in files.items()}
    counts["fact_templates.json"] = sum(len(t) for t in FACT_TEMPLATES["en"].values())
    return counts


def write_fact_corpus(facts_path: str | Path, templates_path: str | Path, out_path: str | Path, *, lang: str = "en",
                      repeats: int = 10, seed: int = 0, facts_per_doc: int = 1) -> int:
    """Render the facts into a JSONL corpus ``{"text"}`` (see `render_fact_documents`); returns the count."""
    if Path(out_path).is_dir():
        raise ValueError(f"{out_path}: is a folder, not a file (the fact corpus is one JSONL file)")
    facts: list[Fact] = read_facts(facts_path)
    docs = render_fact_documents(facts, read_templates(templates_path), lang, repeats, seed, facts_per_doc)
    _write_jsonl(Path(out_path), [{"text": d} for d in docs])
    return len(docs)
