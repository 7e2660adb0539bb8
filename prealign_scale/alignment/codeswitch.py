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

Randomness is counter-based (:func:`word_uniforms`): word k of a document gets two uniforms
``u[k], c[k]`` from a hash of (seed, document id, k) alone (blake2b of (seed, doc id) for the document,
then splitmix64 of that key and k). ``u[k] < p`` decides "switch?" and ``floor(c[k] * n_options)`` picks
the translation. No random stream is consumed, so appending or editing words after word k changes nothing
at or before k, and the same (seed, doc id, k) always gives the same decision.

Matching (:class:`DictionarySwitcher`) uses the one word normaliser of
:mod:`prealign_scale.alignment.words`: a word as written (``"House,``) is cut into punctuation and core;
the core is matched case-folded; the switched word is the target *as the dictionary gives it* (``Haus``,
also for a capitalised source word) with the word's own punctuation and leading space kept.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from prealign_scale.alignment.table import ALIGN, AlignmentTable
from prealign_scale.alignment.words import normalize_word, split_affixes, translation_index
from prealign_scale.text.tokenizer import encode_plain

# The label (and stored target) of a position that takes no loss. Its one home: the code-switcher is the first
# to produce it; the shard format (data/shard_format.py) imports it, and its readers take it from there.
IGNORE_INDEX = -100


class Switcher(Protocol):
    """What a dictionary offers the switcher: the translations (token tuples) of one source word."""

    def translations(self, word: str, token_ids: tuple[int, ...], leading_space: bool) -> list[tuple[int, ...]]:
        ...


class DictionarySwitcher:
    """Translations from an alignment table, matched with :func:`~prealign_scale.alignment.words.normalize_word`.

    The word as written may carry punctuation (``house,``, ``"House``): the core is matched, the options are
    the whole word re-tokenised with the target in place of the core (punctuation kept: with SentencePiece
    BPE ``▁house,`` is often ONE token, so the core cannot be swapped token by token). A target spelled like
    the source word up to case (``bank`` -> ``Bank``) is a valid option; an option whose tokens equal the
    original tokens is dropped (it would switch nothing). Targets keep the dictionary's spelling.

    Only entries of the table's ``align`` part are used by default, so that held-out words stay unseen by both
    phases (the unseen-word probes test generalisation).
    """

    def __init__(self, table: AlignmentTable, tokenizer, source_lang: str, include_heldout: bool = False):
        self._tok = tokenizer  # a `tokenizers.Tokenizer` (fast) or a transformers tokenizer
        entries = [e for e in table.entries if e.split == ALIGN or include_heldout]
        self._targets = translation_index(entries, source_lang)  # normalised word -> [(word, lang, tokens)]
        self._cache: dict[str, tuple[int, ...]] = {}

    def __len__(self) -> int:
        return len(self._targets)

    def covers(self, word: str) -> bool:
        return normalize_word(word) in self._targets

    def translations(self, word, token_ids, leading_space):
        prefix, core, suffix = split_affixes(word)
        outs = self._targets.get(normalize_word(core))
        if not outs:
            return []
        if leading_space and not prefix and not suffix:  # the table stores mid-sentence (leading-space) forms
            options = [toks for _, _, toks in outs]
        else:
            # Punctuation glued on, or no space before the word (document start, after a bracket): tokenise
            # the word as it will be written.
            space = " " if leading_space else ""
            options = [self._encode(f"{space}{prefix}{w}{suffix}") for w, _, _ in outs]
        original = tuple(token_ids)
        return [o for o in options if o != original]

    def _encode(self, text: str) -> tuple[int, ...]:
        ids = self._cache.get(text)
        if ids is None:
            ids = self._cache[text] = encode_plain(self._tok, text)
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


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # splitmix64's increment
_CHOICE_STREAM = np.uint64(0xD1B54A32D192ED03)  # separates the choice uniform from the switch uniform


def doc_key(seed: int, doc_id: str) -> np.uint64:
    """64-bit key of one document: blake2b of (seed, document id)."""
    digest = hashlib.blake2b(f"{seed}\x00{doc_id}".encode(), digest_size=8).digest()
    return np.uint64(int.from_bytes(digest, "little"))


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on a uint64 array (wrapping arithmetic)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def word_uniforms(seed: int, doc_id: str, word_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(u, c): two uniforms in [0, 1) for each word index, a pure function of (seed, doc id, index)."""
    k = np.asarray(word_index, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = doc_key(seed, doc_id) + (k + np.uint64(1)) * _GOLDEN
        u = _splitmix64(x)
        c = _splitmix64(x ^ _CHOICE_STREAM)
    scale = 2.0**-53
    return (u >> np.uint64(11)).astype(np.float64) * scale, (c >> np.uint64(11)).astype(np.float64) * scale


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
    u, c = word_uniforms(seed, doc_id, np.arange(n_words))

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
