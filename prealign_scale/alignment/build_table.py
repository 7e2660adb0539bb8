"""Turn raw dictionary entries into an :class:`AlignmentTable` under a tokenizer.

Steps, each deterministic:

1. Clean every raw entry: strip the words, drop empty words and repeated words (same language and same text;
   the first occurrence stays, so the source word keeps its place in front).
2. Merge entries whose (language, word) sets are identical (the first one's word order stays).
3. Drop entries left with fewer than two words (counted in ``meta["counts"]["dropped"]``).
4. Tokenise every word in its mid-sentence form (:func:`mid_sentence_ids`: leading space, no BOS).
5. Order the entries by their key (the words joined in sorted order, then the languages) and number them
   0..n-1; assign each to ``align`` or ``heldout`` with :func:`split_of` (key, seed, heldout_fraction).
"""

from __future__ import annotations

from collections.abc import Iterable

from prealign_scale.alignment.dictionaries import RawEntry
from prealign_scale.alignment.table import ALIGN, HELDOUT, AlignmentTable, Entry, split_of
from prealign_scale.text.tokenizer import mid_sentence_ids

KEY_SEPARATOR = "\t"


def entry_key(words: Iterable[str]) -> str:
    """The split key of an entry: its words, sorted, joined with a tab."""
    return KEY_SEPARATOR.join(sorted(words))


def clean_entries(raw_entries: Iterable[RawEntry]) -> tuple[list[RawEntry], dict[str, int]]:
    """Steps 1-3 above. Returns the cleaned entries (input order) and counts of what was removed."""
    counts = {"raw_entries": 0, "duplicate_words": 0, "merged": 0, "dropped": 0}
    seen_sets: set[frozenset[tuple[str, str]]] = set()
    cleaned: list[RawEntry] = []
    for raw in raw_entries:
        counts["raw_entries"] += 1
        words: list[str] = []
        langs: list[str] = []
        pairs: set[tuple[str, str]] = set()
        for word, lang in zip(raw.words, raw.langs):
            word = word.strip()
            if not word:
                continue
            if (lang, word) in pairs:
                counts["duplicate_words"] += 1
                continue
            pairs.add((lang, word))
            words.append(word)
            langs.append(lang)
        if len(words) < 2:
            counts["dropped"] += 1
            continue
        word_set = frozenset(pairs)
        if word_set in seen_sets:
            counts["merged"] += 1
            continue
        seen_sets.add(word_set)
        cleaned.append(RawEntry(tuple(words), tuple(langs)))
    return cleaned, counts


def tokenize_words(tokenizer, words: Iterable[str]) -> dict[str, tuple[int, ...]]:
    """Mid-sentence token ids of each distinct word (one batched call for HF fast tokenizers)."""
    unique = sorted(set(words))
    if hasattr(tokenizer, "backend_tokenizer"):
        # The same encoding as mid_sentence_ids (" " + word, no special tokens), batched in Rust.
        ids = tokenizer([" " + w.strip() for w in unique], add_special_tokens=False)["input_ids"]
    else:
        ids = [mid_sentence_ids(tokenizer, w) for w in unique]
    return {w: tuple(int(i) for i in t) for w, t in zip(unique, ids)}


def build_alignment_table(
    raw_entries: Iterable[RawEntry],
    tokenizer,
    *,
    heldout_fraction: float = 0.1,
    seed: int = 0,
    source_lang: str = "src",
    tokenizer_sha256: str,
    dictionary_sha256: str,
    coverage: dict | None = None,
    problems: int = 0,
) -> AlignmentTable:
    """Deduplicate, tokenise, order and split raw entries into an alignment table (see the module doc)."""
    if not 0.0 <= heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}")
    cleaned, counts = clean_entries(raw_entries)
    if not cleaned:
        raise ValueError(f"no dictionary entry with at least two distinct words "
                         f"({counts['raw_entries']} raw entries, {counts['dropped']} dropped)")
    if not any(source_lang in e.langs for e in cleaned):
        langs = sorted({lang for e in cleaned for lang in e.langs})
        raise ValueError(f"source_lang={source_lang!r} appears in no entry (languages present: {langs})")
    token_ids = tokenize_words(tokenizer, (w for e in cleaned for w in e.words))
    empty = sorted(w for w, t in token_ids.items() if not t)
    if empty:
        raise ValueError(f"{len(empty)} words tokenise to nothing, e.g. {empty[:5]}")

    ordered = sorted(cleaned, key=lambda e: (entry_key(e.words), e.langs, e.words))
    entries = [
        Entry(
            id=i,
            words=e.words,
            langs=e.langs,
            tokens=tuple(token_ids[w] for w in e.words),
            split=split_of(entry_key(e.words), seed, heldout_fraction),
        )
        for i, e in enumerate(ordered)
    ]
    counts.update(
        entries=len(entries),
        words=sum(len(e.words) for e in entries),
        align=sum(e.split == ALIGN for e in entries),
        heldout=sum(e.split == HELDOUT for e in entries),
        problems=problems,
    )
    meta = {
        "kind": "dictionary",
        "tokenizer_sha256": tokenizer_sha256,
        "dictionary_sha256": dictionary_sha256,
        "vocab_size": len(tokenizer),
        "vocab_offset": 0,
        "source_lang": source_lang,
        "langs": sorted({lang for e in entries for lang in e.langs}),
        "heldout_fraction": heldout_fraction,
        "seed": seed,
        "coverage": coverage,
        "problems": problems,
        "counts": counts,
    }
    return AlignmentTable(entries, meta)
