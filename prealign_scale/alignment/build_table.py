"""Turn raw dictionary entries into an :class:`AlignmentTable` under a tokenizer.

Steps, each deterministic:

1. Clean every raw entry: strip the words, drop empty words and repeated words (same language and same text;
   the first occurrence stays, so the source word keeps its place in front).
2. Merge entries whose (language, word) sets are identical (the first one's word order stays).
3. Drop entries left with fewer than two words (counted in ``meta["counts"]["dropped"]``).
4. Tokenise every word in its mid-sentence form (:func:`prealign_scale.text.tokenizer.mid_sentence_forms`:
   as after a space inside a sentence, no BOS). A word of more than :data:`MAX_WORD_TOKENS` tokens stops the
   build (ValueError naming the word's ``path:line``): no dictionary word is that long; it is a broken line or
   a tokenizer that does not cover the script (the readers already bound the characters, MAX_WORD_CHARS).
5. Order the entries by their key (the words joined in sorted order, then the languages) and number them
   0..n-1.
6. Split without leaks (:func:`leak_free_splits`): entries that share a word (same language, same
   :func:`~prealign_scale.alignment.words.normalize_word` form) form one group (union-find), and whole
   groups go to ``align`` or ``heldout``, so no normalised word of a held-out entry occurs in an align entry.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from prealign_scale.alignment.dictionaries import RawEntry
from prealign_scale.alignment.table import ALIGN, HELDOUT, AlignmentTable, Entry
from prealign_scale.alignment.words import word_key
from prealign_scale.text.tokenizer import mid_sentence_forms

KEY_SEPARATOR = "\t"
# What meta.json records as the split rule (docs/dictionaries.md, "The split").
MAX_WORD_TOKENS = 64  # most tokens one dictionary word may take under the tokenizer
SPLIT_RULE = ("groups: entries sharing a (language, normalised word) are one group; whole groups are held out "
              "in order of blake2b(seed, group key) while that brings the held-out entry count closer to "
              "round(heldout_fraction * entries)")


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
        origins: list[str] = []
        pairs: set[tuple[str, str]] = set()
        for i, (word, lang) in enumerate(zip(raw.words, raw.langs)):
            word = word.strip()
            if not word:
                continue
            if (lang, word) in pairs:
                counts["duplicate_words"] += 1
                continue
            pairs.add((lang, word))
            words.append(word)
            langs.append(lang)
            if raw.where:
                origins.append(raw.where[i])
        if len(words) < 2:
            counts["dropped"] += 1
            continue
        word_set = frozenset(pairs)
        if word_set in seen_sets:
            counts["merged"] += 1
            continue
        seen_sets.add(word_set)
        cleaned.append(RawEntry(tuple(words), tuple(langs), tuple(origins)))
    return cleaned, counts


def tokenize_words(tokenizer, words: Iterable[str]) -> dict[str, tuple[int, ...]]:
    """Mid-sentence token ids of each distinct word (batched in Rust; no BOS whatever the template)."""
    return mid_sentence_forms(tokenizer, words)


def check_word_tokens(entries: Sequence[RawEntry], token_ids: dict[str, tuple[int, ...]]) -> None:
    """ValueError naming ``path:line`` (when known) of the first word longer than MAX_WORD_TOKENS tokens."""
    for e in entries:
        for i, word in enumerate(e.words):
            n = len(token_ids[word.strip()])
            if n > MAX_WORD_TOKENS:
                where = f"{e.where[i]}: " if e.where else ""
                raise ValueError(f"{where}word {word[:20]!r}{'...' if len(word) > 20 else ''} is {n} tokens, "
                                 f"more than the limit MAX_WORD_TOKENS={MAX_WORD_TOKENS} (a broken line, or a "
                                 "tokenizer that does not cover this script)")


def word_groups(entries: Sequence) -> list[int]:
    """Group number of every entry: entries that share a (language, normalised word) share a group
    (union-find, transitively: ``house/Haus``, ``home/Haus`` and ``home/Heim`` are one group). Groups are
    numbered by their first entry."""
    parent = list(range(len(entries)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]  # path halving
            i = parent[i]
        return i

    owner: dict[tuple[str, str], int] = {}  # word key -> first entry holding it
    for i, e in enumerate(entries):
        for w, lang in zip(e.words, e.langs):
            key = word_key(lang, w)
            if not key[1]:
                continue  # a word of punctuation only ties nothing together
            j = owner.setdefault(key, i)
            ri, rj = find(i), find(j)
            if ri != rj:
                parent[max(ri, rj)] = min(ri, rj)
    roots = [find(i) for i in range(len(entries))]
    number: dict[int, int] = {}
    return [number.setdefault(r, len(number)) for r in roots]


def leak_free_splits(keys: Sequence[str], groups: Sequence[int], seed: int, heldout_fraction: float) -> list[str]:
    """``align`` / ``heldout`` for every entry, whole groups at a time (see :data:`SPLIT_RULE`).

    keys[i] is entry i's key (:func:`entry_key`); groups[i] its group (:func:`word_groups`). A group's key is
    its smallest entry key, so the split depends only on the entries and the seed, not on their order. The
    groups are visited in the order of a seeded hash of that key; each one is held out when that brings the
    held-out entry count closer to the target ``round(heldout_fraction * n)`` (a group too large to fit is
    skipped and smaller ones after it still can be), so the fraction is met as closely as the groups allow.
    """
    members: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)

    def order(g: int) -> tuple[bytes, str]:
        gkey = min(keys[i] for i in members[g])
        return hashlib.blake2b(f"{seed}\x00{gkey}".encode(), digest_size=8).digest(), gkey

    target = round(heldout_fraction * len(keys))
    splits = [ALIGN] * len(keys)
    held = 0
    for g in sorted(members, key=order):
        size = len(members[g])
        if abs(held + size - target) < abs(held - target):
            held += size
            for i in members[g]:
                splits[i] = HELDOUT
    return splits


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
    check_word_tokens(cleaned, token_ids)

    ordered = sorted(cleaned, key=lambda e: (entry_key(e.words), e.langs, e.words))
    groups = word_groups(ordered)
    splits = leak_free_splits([entry_key(e.words) for e in ordered], groups, seed, heldout_fraction)
    entries = [
        Entry(id=i, words=e.words, langs=e.langs, tokens=tuple(token_ids[w.strip()] for w in e.words), split=split)
        for i, (e, split) in enumerate(zip(ordered, splits))
    ]
    counts.update(
        entries=len(entries),
        words=sum(len(e.words) for e in entries),
        align=sum(e.split == ALIGN for e in entries),
        heldout=sum(e.split == HELDOUT for e in entries),
        groups=len(set(groups)),
        heldout_groups=len({g for g, e in zip(groups, entries) if e.split == HELDOUT}),
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
        "split_rule": SPLIT_RULE,
        "seed": seed,
        "coverage": coverage,
        "problems": problems,
        "counts": counts,
    }
    return AlignmentTable(entries, meta)
