"""Input-only code-switching of one document (METHOD.md §3): a pure function of (seed, document id, word index).

Given a document's token ids and its word segmentation (from the tokenizer's own pre-tokenizer, i.e. from
the text, never guessed from subword prefixes), every dictionary-covered word is replaced, independently with
probability ``p``, by one of its translations chosen uniformly. The result is the switched token sequence and
a parallel *label* array used to build next-token targets:

- ``labels[t] = input_ids[t]`` for ordinary tokens;
- ``labels[t] = first token of the ORIGINAL word`` if ``t`` is the first token of a switched word;
- ``labels[t] = -100`` if ``t`` is a later token of a switched word.

The target stored for position ``t`` is then ``labels[t + 1]`` (done by the packer), so the model reads the
switched word but is trained to predict the original one, and is never trained to emit switched tokens.

Randomness: ``u = rng.random(n_words)`` decides "switch?" (``u[k] < p``) and ``c = rng.random(n_words)``
picks the translation (``floor(c[k] * n_translations)``), with ``rng`` seeded from (seed, document id) only.
The k-th draw depends only on (seed, doc id, k), whatever the rest of the document or the run.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from prealign_scale.alignment.table import ALIGN, AlignmentTable

# The label (and stored target) of a position that takes no loss. Its one home: the code-switcher is the first
# to produce it; the shard format (data/shard_format.py) imports it, and its readers take it from there.
IGNORE_INDEX = -100


class Switcher(Protocol):
    """What a dictionary offers the switcher: the translations (token tuples) of one source word."""

    def translations(self, word: str, token_ids: tuple[int, ...], leading_space: bool) -> list[tuple[int, ...]]:
        ...


class DictionarySwitcher:
    """Translations from an alignment table: lower-cased match on the source word, target as given.

    Only entries of the table's ``align`` part are used by default, so that held-out words stay unseen by both
    phases (the unseen-word probes test generalisation).
    """

    def __init__(self, table: AlignmentTable, tokenizer, source_lang: str, include_heldout: bool = False):
        self._tok = tokenizer  # a `tokenizers.Tokenizer` (fast) or a transformers tokenizer
        self._targets: dict[str, list[tuple[str, tuple[int, ...]]]] = {}
        for e in table.entries:
            if e.split != ALIGN and not include_heldout:
                continue
            for w, lang in zip(e.words, e.langs):
                if lang != source_lang:
                    continue
                key = w.lower()
                outs = self._targets.setdefault(key, [])
                for w2, lang2, toks2 in zip(e.words, e.langs, e.tokens):
                    if lang2 != source_lang and w2.lower() != key and (w2, toks2) not in outs:
                        outs.append((w2, toks2))
        self._targets = {k: v for k, v in self._targets.items() if v}
        self._no_space_cache: dict[str, tuple[int, ...]] = {}

    def __len__(self) -> int:
        return len(self._targets)

    def covers(self, word: str) -> bool:
        return word.lower() in self._targets

    def translations(self, word, token_ids, leading_space):
        outs = self._targets.get(word.lower())
        if not outs:
            return []
        if leading_space:  # the table stores mid-sentence (leading-space) forms
            return [toks for _, toks in outs]
        # Word at document start or after a bracket: use the target's form without the space.
        return [self._no_space(w) for w, _ in outs]

    def _no_space(self, word: str) -> tuple[int, ...]:
        ids = self._no_space_cache.get(word)
        if ids is None:
            enc = self._tok.encode(word, add_special_tokens=False)
            ids = tuple(enc.ids if hasattr(enc, "ids") else enc)
            self._no_space_cache[word] = ids
        return ids


class CloneSwitcher:
    """English-Clone: a word is covered when all its token ids are in the dictionary's id set; its
    translation is its own tokens shifted into the Clone half (t -> t + V)."""

    def __init__(self, table: AlignmentTable, include_heldout: bool = False):
        self.offset = table.vocab_offset
        if self.offset <= 0:
            raise ValueError("CloneSwitcher needs a clone table (meta.vocab_offset = V > 0)")
        self.covered = np.zeros(self.offset, dtype=bool)
        for e in table.entries:
            if e.split == ALIGN or include_heldout:
                for toks in e.tokens:
                    for t in toks:
                        if t < self.offset:
                            self.covered[t] = True

    def translations(self, word, token_ids, leading_space):
        if all(self.covered[t] for t in token_ids):
            return [tuple(t + self.offset for t in token_ids)]
        return []


def doc_rng(seed: int, doc_id: str) -> np.random.Generator:
    """The random stream of one document: a pure function of (seed, document id)."""
    digest = hashlib.blake2b(f"{seed}\x00{doc_id}".encode(), digest_size=16).digest()
    return np.random.default_rng(np.frombuffer(digest, dtype=np.uint32).tolist())


@dataclass
class SwitchedDoc:
    input_ids: np.ndarray  # int64 switched tokens
    labels: np.ndarray  # int64, see module docstring
    switch_starts: np.ndarray  # int64 positions (in input_ids) of the first token of each switched word

    @property
    def n_switched(self) -> int:
        return int(self.switch_starts.size)


def switch_document(
    ids: np.ndarray,
    word_ids: np.ndarray,
    word_text: Callable[[int, int, int], str],
    switcher: Switcher | None,
    p: float,
    seed: int,
    doc_id: str,
) -> SwitchedDoc:
    """Code-switch one tokenised document.

    ids: int array [n] of token ids; word_ids: int array [n], the pre-tokenizer word index of every token
    (non-decreasing; `Encoding.word_ids`); word_text(k, a, b): word k (tokens a..b) as written, with its
    leading space (see prealign_scale/data/word_encoder.py); asked only for the few candidate words.
    """
    ids = np.asarray(ids, dtype=np.int64)
    n = ids.size
    if n == 0 or switcher is None or p <= 0.0:
        return SwitchedDoc(ids, ids.copy(), np.zeros(0, dtype=np.int64))
    word_ids = np.asarray(word_ids, dtype=np.int64)
    starts = np.concatenate(([0], np.flatnonzero(np.diff(word_ids)) + 1))
    ends = np.append(starts[1:], n)
    n_words = starts.size
    rng = doc_rng(seed, doc_id)
    u = rng.random(n_words)
    c = rng.random(n_words)

    # 1. decide: candidates (u < p) that the dictionary covers, with their chosen translation
    cand = np.flatnonzero(u < p)  # a few percent of the words
    cs, ce = starts[cand].tolist(), ends[cand].tolist()
    switches = []  # (a, b, new tokens)
    for k, a, b, ck in zip(cand.tolist(), cs, ce, c[cand].tolist()):
        orig = tuple(ids[a:b].tolist())
        word = word_text(k, a, b)  # the word as written, with its leading space if any
        stripped = word.strip()
        if not stripped:
            continue
        options = switcher.translations(stripped, orig, word[:1].isspace())
        if options:
            switches.append((a, b, options[int(ck * len(options))]))
    if not switches:
        return SwitchedDoc(ids, ids.copy(), np.zeros(0, dtype=np.int64))

    # 2. rebuild: untouched stretches interleaved with the switched words
    pieces_ids, pieces_lab, switch_starts = [], [], []
    prev = out_len = 0  # next original token not yet copied; length of the output so far
    for a, b, new in switches:
        pieces_ids.append(ids[prev:a])
        pieces_lab.append(ids[prev:a])
        out_len += a - prev
        pieces_ids.append(np.array(new, dtype=np.int64))
        # the position before the word predicts the ORIGINAL word's first token; the rest is ignored
        pieces_lab.append(np.array((int(ids[a]),) + (IGNORE_INDEX,) * (len(new) - 1), dtype=np.int64))
        switch_starts.append(out_len)
        out_len += len(new)
        prev = b
    pieces_ids.append(ids[prev:])
    pieces_lab.append(ids[prev:])
    return SwitchedDoc(
        np.concatenate(pieces_ids), np.concatenate(pieces_lab), np.asarray(switch_starts, dtype=np.int64)
    )


def make_switcher(table: AlignmentTable | None, tokenizer, source_lang: str, include_heldout: bool = False):
    """The switcher a table calls for: Clone tables shift ids, dictionary tables look words up."""
    if table is None:
        return None
    if table.meta.get("kind") == "clone":
        return CloneSwitcher(table, include_heldout)
    return DictionarySwitcher(table, tokenizer, source_lang, include_heldout)
