"""The alignment probe's core (METHOD.md §5): probe sets from an alignment table, and their scoring.

Shared by the training engine (the in-training probe callback, `prealign_scale.engine.probe_callback`) and
the evaluator (`prealign_scale.eval.probe`, which adds the composed-word and TSV groups and the report), so
that it lives below both. What the numbers mean is documented in `prealign_scale.eval.probe`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from prealign_scale.alignment.table import ALIGN, HELDOUT, AlignmentTable, Entry
from prealign_scale.alignment.word_vectors import layer_names, pooled_vectors
from prealign_scale.alignment.words import word_key
from prealign_scale.model.view import ModelView

SPLIT_GROUPS = {ALIGN: "seen", HELDOUT: "unseen"}


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


def run_probe(view: ModelView, probe: ProbeSet, batch_size: int = 256, pad_id: int = 0,
              bos_id: int | None = None) -> dict:
    """Score every group of `probe` on the model: ``{"layers": [...], "groups": {name: {...per layer...}}}``.

    Each distinct token sequence runs through the model once (in eval mode, without gradients); `bos_id`:
    after this id (phase 1's ``align.word_bos``), which the vectors do not pool.
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
        vecs = pooled_vectors(view, list(seqs), batch_size, pad_id, bos_id)
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
