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
logs `probe_metrics(run_probe(view, probe_set))` into metrics.jsonl.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from prealign_scale.alignment.clone import CLONE, clone_word
from prealign_scale.alignment.table import ALIGN, HELDOUT, AlignmentTable, Entry
from prealign_scale.alignment.word_vectors import layer_names
from prealign_scale.alignment.words import word_key
from prealign_scale.eval.io import EvalInputError, read_tsv
from prealign_scale.eval.model_view import ModelView, pooled_vectors
from prealign_scale.eval.text import TextEncoder

SPLIT_GROUPS = {ALIGN: "seen", HELDOUT: "unseen"}
COMPOSED_GROUP = "unseen-composed"  # multi-token words never trained as a whole, made of seen tokens


@dataclass(frozen=True)
class ProbePair:
    """A source word and one of its translations, as token ids (plus their text, for reports)."""

    src: tuple[int, ...]
    tgt: tuple[int, ...]
    src_word: str = ""
    tgt_word: str = ""


@dataclass
class ProbeSet:
    """Named groups of pairs; each group is scored on its own (its targets are its candidates)."""

    groups: dict[str, list[ProbePair]] = field(default_factory=dict)

    def __post_init__(self):
        for name, pairs in self.groups.items():
            if not pairs:
                raise ValueError(f"probe group {name!r} has no pairs")


# ------------------------------------------------------------------------------------------- building sets

def pairs_of_entry(entry: Entry, source_lang: str) -> list[tuple[str, ProbePair]]:
    """(target language, pair) for every (source word, word of another language) of an entry.

    The source words are those of `source_lang`; an entry without one uses its first word as the source.
    """
    src = [i for i, lang in enumerate(entry.langs) if lang == source_lang] or [0]
    src_langs = {entry.langs[i] for i in src}
    out = []
    for i in src:
        for j, lang in enumerate(entry.langs):
            if j != i and lang not in src_langs:
                out.append((lang, ProbePair(entry.tokens[i], entry.tokens[j], entry.words[i], entry.words[j])))
    return out


def trained_words(table: AlignmentTable) -> set:
    """What the table's ``align`` part trains: the token ids of its words and, for dictionary tables, their
    (language, normalised word) keys (:func:`prealign_scale.alignment.words.word_key`). English-Clone words
    are token strings, one entry per token id, so there the token ids alone say what was trained."""
    seen: set = set()
    for entry in table.part(ALIGN):
        for word, lang, toks in zip(entry.words, entry.langs, entry.tokens):
            seen.add(("tokens", toks))
            if table.meta.get("kind") != "clone":
                seen.add(word_key(lang, word))
    return seen


def probe_set_from_table(table: AlignmentTable, max_pairs: int | None = None, seed: int = 0) -> ProbeSet:
    """Groups ``seen`` (align part) and ``unseen`` (heldout part) of a table; with several target languages
    ``seen:de``, ``unseen:de``, ... Each group keeps at most `max_pairs` pairs: a subset drawn with
    ``numpy.random.default_rng(seed)`` (the same for the same table and seed), in table order.

    ``unseen`` holds only held-out words: a held-out pair whose source or target word the align part trains
    (:func:`trained_words`; possible in tables built before the leak-free split) is left out."""
    source_lang = table.meta.get("source_lang") or table.entries[0].langs[0]
    trained = trained_words(table)
    by_group: dict[tuple[str, str], list[ProbePair]] = {}
    for entry in table.entries:
        for lang, pair in pairs_of_entry(entry, source_lang):
            if entry.split == HELDOUT and _is_trained(pair, source_lang, lang, trained, table):
                continue
            by_group.setdefault((SPLIT_GROUPS[entry.split], lang), []).append(pair)
    tgt_langs = {lang for _, lang in by_group}
    groups: dict[str, list[ProbePair]] = {}
    for (split, lang), pairs in sorted(by_group.items()):
        name = split if len(tgt_langs) == 1 else f"{split}:{lang}"
        groups[name] = subsample(pairs, max_pairs, seed)
    if not groups:
        raise ValueError("probe_set_from_table: the table gives no word pairs")
    return ProbeSet(groups)


def _is_trained(pair: ProbePair, src_lang: str, tgt_lang: str, trained: set, table: AlignmentTable) -> bool:
    if ("tokens", pair.src) in trained or ("tokens", pair.tgt) in trained:
        return True
    if table.meta.get("kind") == "clone":
        return False
    return word_key(src_lang, pair.src_word) in trained or word_key(tgt_lang, pair.tgt_word) in trained


def subsample(items: list, max_items: int | None, seed: int) -> list:
    """At most `max_items` of `items`, a seeded random subset kept in input order."""
    if max_items is None or len(items) <= max_items:
        return list(items)
    if max_items < 1:
        raise ValueError(f"max_items must be >= 1, got {max_items}")
    keep = np.sort(np.random.default_rng(seed).choice(len(items), size=max_items, replace=False))
    return [items[int(i)] for i in keep]


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


# ----------------------------------------------------------------------------------------------- scoring

def retrieval_credit(sims: Tensor, gold: list[set[int]]) -> Tensor:
    """Accuracy@1 credit of each query row of `sims` [n, m]: j / k when its maximum is shared by k
    candidates of which j are in ``gold[i]`` (1.0 or 0.0 without ties)."""
    top = sims == sims.max(dim=1, keepdim=True).values
    is_gold = torch.zeros_like(top)
    for i, g in enumerate(gold):
        is_gold[i, list(g)] = True
    return (top & is_gold).sum(1).double() / top.sum(1).double()


def _index(pairs: list[ProbePair]) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]], list[tuple[int, int]]]:
    """Distinct source words, distinct target words (first-seen order) and the (src, tgt) index links."""
    srcs: dict[tuple[int, ...], int] = {}
    tgts: dict[tuple[int, ...], int] = {}
    links = []
    for p in pairs:
        links.append((srcs.setdefault(p.src, len(srcs)), tgts.setdefault(p.tgt, len(tgts))))
    return list(srcs), list(tgts), sorted(set(links))


def score_group(src_vecs: Tensor, tgt_vecs: Tensor, links: list[tuple[int, int]]) -> dict:
    """Retrieval and cosine statistics of one group, per layer: src_vecs [L, n, h], tgt_vecs [L, m, h]."""
    n, m = src_vecs.shape[1], tgt_vecs.shape[1]
    gold_s2t: list[set[int]] = [set() for _ in range(n)]
    gold_t2s: list[set[int]] = [set() for _ in range(m)]
    true = torch.zeros(n, m, dtype=torch.bool)
    for i, j in links:
        gold_s2t[i].add(j)
        gold_t2s[j].add(i)
        true[i, j] = True
    cos = F.normalize(src_vecs.double(), dim=-1) @ F.normalize(tgt_vecs.double(), dim=-1).transpose(1, 2)
    res: dict[str, list] = {"acc": [], "acc_src2tgt": [], "acc_tgt2src": [], "cos_true": [], "cos_random": []}
    for c in cos:  # one layer: [n, m]
        s2t = float(retrieval_credit(c, gold_s2t).mean())
        t2s = float(retrieval_credit(c.T, gold_t2s).mean())
        res["acc_src2tgt"].append(s2t)
        res["acc_tgt2src"].append(t2s)
        res["acc"].append((s2t + t2s) / 2)
        res["cos_true"].append(float(c[true].mean()))
        res["cos_random"].append(float(c[~true].mean()) if bool((~true).any()) else None)
    return {"pairs": len(links), "sources": n, "candidates": m, "chance": 1.0 / m, **res}


def run_probe(view: ModelView, probe: ProbeSet, batch_size: int = 256, pad_id: int = 0) -> dict:
    """Score every group of `probe` on the model: ``{"layers": [...], "groups": {name: {...per layer...}}}``.

    Each distinct token sequence runs through the model once (in eval mode, without gradients).
    """
    seqs: dict[tuple[int, ...], int] = {}
    indexed = {}
    for name, pairs in probe.groups.items():
        srcs, tgts, links = _index(pairs)
        for s in srcs + tgts:
            seqs.setdefault(s, len(seqs))
        indexed[name] = (srcs, tgts, links)
    was_training = getattr(view, "model", None) is not None and view.model.training
    if was_training:
        view.model.eval()
    try:
        vecs = pooled_vectors(view, list(seqs), batch_size, pad_id)
    finally:
        if was_training:
            view.model.train()
    groups = {}
    for name, (srcs, tgts, links) in indexed.items():
        s_idx = torch.tensor([seqs[s] for s in srcs])
        t_idx = torch.tensor([seqs[t] for t in tgts])
        groups[name] = score_group(vecs[:, s_idx], vecs[:, t_idx], links)
    return {"layers": layer_names(view.num_layers), "groups": groups}


def probe_metrics(result: dict, prefix: str = "probe") -> dict:
    """The flat metrics.jsonl fields of a probe result: ``probe_<group>_<stat>`` -> per-layer list
    (``acc``, ``cos_true``, ``cos_random``), group names with ``:`` written as ``_``."""
    out = {}
    for name, g in result["groups"].items():
        key = name.replace(":", "_")
        for stat in ("acc", "cos_true", "cos_random"):
            out[f"{prefix}_{key}_{stat}"] = [None if v is None else round(v, 6) for v in g[stat]]
    return out
