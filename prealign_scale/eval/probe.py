"""Alignment probe (METHOD.md §5): do translation-equivalent words get similar representations, per layer?

For a group of word pairs (``seen``: the alignment table's ``align`` part, used by phase 1 and code-
switching; ``unseen``: its ``heldout`` part; ``unseen-composed``: English-Clone words of a held-out text
that no entry holds but whose tokens are all seen, see `composed_pairs`; or any TSV of word pairs), and for
every one of the
``n_layers + 2`` probe layers (embedding output, blocks 1 .. n-1, final norm, unembedding rows; the same
layers as the alignment loss), a word's vector is the mean of that layer's vectors over its tokens (the word
alone, mid-sentence form, positions from 0, no BOS), and:

- ``acc_src2tgt``: translation retrieval accuracy@1: for each distinct source word, the candidate with the
  highest cosine among *all distinct target words of the group* must be one of its translations;
  ``acc_tgt2src`` the same the other way; ``acc`` their mean. Ties share the credit: a query whose maximum
  is reached by k candidates, j of them translations, scores j / k (so a constant model scores exactly
  chance, ``chance`` = 1 / number of candidates).
- ``cos_true``: mean cosine of the true (source, target) pairs; ``cos_random``: mean cosine of all other
  (source, target) combinations of the group (every non-translation pair: exact, no sampling).

The same machinery scores sentence retrieval (`prealign_scale.eval.retrieval`): a "word" may be any token
sequence. During training the engine builds a small fixed `ProbeSet` once (`probe_set_from_table`) and
logs `probe_metrics(run_probe(view, probe_set))` into metrics.jsonl. The core (sets from a table, scoring)
lives in `prealign_scale.alignment.probe`, below both the engine and the evaluator; this module adds the
composed-word, token-disjoint (`token_disjoint_groups`) and TSV groups.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from prealign_scale.alignment.clone import CLONE, clone_word
from prealign_scale.alignment.probe import ProbePair  # the core, shared with the in-training probe
from prealign_scale.alignment.table import ALIGN, AlignmentTable
from prealign_scale.eval.io import EvalInputError, read_tsv
from prealign_scale.eval.text import TextEncoder

COMPOSED_GROUP = "unseen-composed"  # multi-token words never trained as a whole, made of seen tokens
DISJOINT_SUFFIX = "-disjoint"  # a group's pairs whose two words share no token id


def token_disjoint_groups(groups: dict[str, list[ProbePair]]) -> dict[str, list[ProbePair]]:
    """``<group>-disjoint`` for each group: its pairs whose source and target share no token id.

    In a real pair many translations are spelt (nearly) alike, names above all (``aaron`` / ``aarón`` share
    a token, ``abarim`` / ``abarim`` are identical): a model that never aligned anything already retrieves
    those from the shared tokens, which lifts every arm's ``seen`` / ``unseen`` retrieval alike. The disjoint
    subgroup (its own candidates: the disjoint targets) measures alignment that shared spelling cannot give.
    A group with no such pair gets no subgroup."""
    out = {}
    for name, pairs in groups.items():
        kept = [p for p in pairs if not set(p.src) & set(p.tgt)]
        if kept:
            out[name + DISJOINT_SUFFIX] = kept
    return out


def mid_sentence_words(texts: Iterable[str], tokenizer: Any) -> list[str]:
    """Distinct words of `texts` in mid-sentence form, in first-seen order.

    A word is a piece of the tokenizer's pre-tokenizer (``tokenizer.backend_tokenizer.pre_tokenizer``; a
    whitespace split when it has none) that follows a space (byte-level BPE keeps the space in the piece:
    ``" house"``; other pre-tokenizers drop it, then the character before the piece must be a space) and is
    letters only (``str.isalpha``), returned without the space. Sentence-initial words, words after a
    newline or a quote, numbers and punctuation are left out.
    """
    pre = getattr(getattr(tokenizer, "backend_tokenizer", None), "pre_tokenizer", None)
    seen: dict[str, None] = {}
    for text in texts:
        if pre is not None:
            spans = [(start, end) for _, (start, end) in pre.pre_tokenize_str(text)]
        else:
            spans = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
        for start, end in spans:
            piece = text[start:end]
            if piece.startswith(" "):
                word = piece[1:]
            elif start > 0 and text[start - 1] == " ":
                word = piece
            else:
                continue
            if word.isalpha():
                seen.setdefault(word, None)
    return list(seen)


def composed_pairs(table: AlignmentTable, encoder: TextEncoder, texts: Iterable[str]) -> list[ProbePair]:
    """The ``unseen-composed`` group of an English-Clone table: (English word, its Clone) for every word of
    `texts` (`mid_sentence_words`, first-seen order) that phase 1 never trained as a whole but whose every
    token it trained:

    - its mid-sentence tokenisation (`TextEncoder.encode_word`) has at least two tokens,
    - each of them is a single-token source-language word of the table's ``align`` part, and each token of
      its Clone form a single-token Clone word of that part,
    - neither form is the token sequence of a table entry (either split).

    In English-Clone every entry is one token, so the ``unseen`` group (held-out single tokens) cannot be
    aligned by phase 1 at all; this group asks whether the alignment of the seen tokens composes into
    words that were never dictionary entries.
    """
    encoder.check_lang(CLONE)
    source_lang = table.meta.get("source_lang") or table.entries[0].langs[0]
    seen_src: set[int] = set()
    seen_tgt: set[int] = set()
    whole: set[tuple[int, ...]] = set()
    for entry in table.entries:
        whole.update(entry.tokens)
        if entry.split != ALIGN:
            continue
        for lang, toks in zip(entry.langs, entry.tokens):
            if len(toks) == 1 and lang == source_lang:
                seen_src.add(toks[0])
            elif len(toks) == 1 and lang == CLONE:
                seen_tgt.add(toks[0])
    pairs = []
    for word in mid_sentence_words(texts, encoder.tokenizer):
        src = tuple(encoder.encode_word(word, source_lang))
        tgt = tuple(encoder.encode_word(word, CLONE))
        if len(src) < 2 or src in whole or tgt in whole:
            continue
        if all(t in seen_src for t in src) and all(t in seen_tgt for t in tgt):
            pairs.append(ProbePair(src, tgt, word, clone_word(word)))
    return pairs


def read_pairs_tsv(path: str | Path, encoder: TextEncoder, src_lang: str, tgt_lang: str) -> list[ProbePair]:
    """Word pairs from a TSV file ``src<TAB>tgt`` (MUSE style), tokenised in mid-sentence form.

    A Clone word may be written ``house`` or ``§house``. Errors name ``path:line``.
    """
    encoder.check_lang(src_lang)
    encoder.check_lang(tgt_lang)
    pairs = []
    for lineno, (src, tgt) in read_tsv(path, 2):
        s, t = encoder.encode_word(src, src_lang), encoder.encode_word(tgt, tgt_lang)
        if not s or not t:
            raise EvalInputError(f"{path}:{lineno}: a word tokenises to nothing: {src!r} / {tgt!r}")
        pairs.append(ProbePair(tuple(s), tuple(t), src, tgt))
    return pairs
