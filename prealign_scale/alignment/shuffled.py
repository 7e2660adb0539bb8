"""The shuffled-dictionary control: the same words as a table, paired at random.

A converged phase 1 does two things at once: it pulls translations together (the alignment) and it trains the
embeddings and lower layers of every dictionary word, frequent words first (extra training). A run whose
phase 1 sees the *same words* for the *same steps*, but paired with random partners, gets the second and not
the first; comparing PreAlign with it separates an alignment effect from an extra-training effect
(issue 10, item 11; docs/results/real_pair_en_es.md).

`shuffle_pairs(table, seed)` keeps every entry's source-language side (its words in ``meta["source_lang"]``)
and gives it the target side (all its other words) of another ``align`` entry:

- the order of the align entries is a pure function of (seed, entry id) (blake2b), and entry ``order[k]``
  takes the target side of ``order[k + 1]`` (cyclically), so no entry keeps its own target side (a
  derangement whenever there are two or more entries);
- the multiset of source sides and of target sides is unchanged, so phase 1 sees exactly the same words,
  token ids and entry count;
- ``heldout`` entries are left as they are (the unseen-word probe is the same as the real table's);
- entries without a source-language word or without another word take no part and are kept as they are.

The result records what it was made from in ``meta["shuffled"]``: the original entries' sha256, the seed,
the rule and the number of entries re-paired. Probes of the control's *alignment* must use the real table
(``probe_table`` in the eval config); its own entries are random pairs by construction.
"""

from __future__ import annotations

import copy
import hashlib

from prealign_scale.alignment.table import ALIGN, AlignmentTable, Entry

RULE = ("align entries ordered by blake2b(seed, entry id); entry order[k] keeps its source-language words and "
        "takes the other words of entry order[k+1] (cyclically); heldout entries unchanged")


def _order_key(seed: int, entry_id: int) -> bytes:
    return hashlib.blake2b(f"{seed}\x00{entry_id}".encode(), digest_size=8).digest()


def _sides(entry: Entry, source_lang: str):
    """(source side, target side) of an entry as lists of (word, lang, tokens)."""
    items = list(zip(entry.words, entry.langs, entry.tokens))
    src = [it for it in items if it[1] == source_lang]
    tgt = [it for it in items if it[1] != source_lang]
    return src, tgt


def shuffle_pairs(table: AlignmentTable, seed: int = 0) -> AlignmentTable:
    """A new table whose align entries pair the same source words with other entries' target words."""
    source_lang = table.meta.get("source_lang")
    if not source_lang:
        raise ValueError("the table's meta.json names no source_lang; cannot tell an entry's sides apart")
    movable = []  # indices into table.entries of align entries with both sides
    for i, e in enumerate(table.entries):
        if e.split != ALIGN:
            continue
        src, tgt = _sides(e, source_lang)
        if src and tgt:
            movable.append(i)
    if len(movable) < 2:
        raise ValueError(f"the table has {len(movable)} align entries with a {source_lang!r} word and another word; "
                         f"a shuffled control needs at least 2")
    order = sorted(movable, key=lambda i: _order_key(seed, table.entries[i].id))
    entries = list(table.entries)
    for k, i in enumerate(order):
        donor = table.entries[order[(k + 1) % len(order)]]
        src, _ = _sides(table.entries[i], source_lang)
        _, tgt = _sides(donor, source_lang)
        items = src + tgt
        entries[i] = Entry(id=table.entries[i].id, words=tuple(w for w, _, _ in items),
                           langs=tuple(lang for _, lang, _ in items), tokens=tuple(t for _, _, t in items),
                           split=ALIGN)
    meta = copy.deepcopy(table.meta)
    meta["shuffled"] = {"from_entries_sha256": table.sha256(), "seed": seed, "rule": RULE,
                        "entries_repaired": len(order)}
    meta["coverage"] = None  # the original table's coverage report describes its pairs, not these
    return AlignmentTable(entries, meta)
