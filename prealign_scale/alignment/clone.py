"""English-Clone (METHOD.md §4): a synthetic second language, English shifted into a second vocabulary.

An English tokenizer has V ids. The Clone of id t is t + V, so the model's vocabulary is 2V with separate
input and output rows for Clone; Clone text has the grammar and statistics of English and zero lexical
overlap. Special tokens (BOS/EOS/PAD/UNK) are shared: they are never shifted.

Three pieces live here:

- :class:`CloneTokenizer`: encode text as English or as Clone, decode mixed id sequences (Clone words are
  shown with the marker ``§``: ``"the §house"``), shift id lists between the two halves.
- :func:`split_corpus`: the English and the Clone corpus are made of *different* documents.
- :func:`make_clone_table`: the identity dictionary t ↔ t+V over a subset of ids (top-N most frequent, or a
  random fraction), as an :class:`AlignmentTable` with a deterministic held-out part.

Clone corpora are stored as ordinary (English) text; the shift happens when they are tokenised with
``lang="clone"`` (the shard builder does this for corpora tagged ``clone``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from prealign_scale.alignment.table import HELDOUT, AlignmentTable, Entry, split_of

EN, CLONE = "en", "clone"
CLONE_MARK = "§"  # prefix of every Clone word in decoded text and in the table's Clone word forms
_WORD = re.compile(r"\S+")


def clone_word(word: str) -> str:
    """The display form of a Clone word: ``"house"`` → ``"§house"``."""
    return CLONE_MARK + word


_MARKED = re.compile(r"(^|(?<=\s))" + re.escape(CLONE_MARK))


def mark_clone(text: str) -> str:
    """The marked display form of a Clone text: ``"the house,"`` -> ``"§the §house,"``."""
    return _WORD.sub(lambda m: CLONE_MARK + m.group(0), text)


def unmark_clone(text: str) -> str:
    """Remove the Clone mark that starts each whitespace-separated piece: ``"§the §house,"`` -> ``"the house,"``."""
    return _MARKED.sub("", text)


class CloneTokenizer:
    """An English tokenizer seen as a two-language tokenizer over 2V ids (English: [0, V), Clone: [V, 2V)).

    ``base`` is a transformers ``PreTrainedTokenizerFast`` (V = ``len(base)``, added special tokens included).
    Ids of base special tokens are the same in both languages.
    """

    def __init__(self, base: Any):
        self.base = base
        self.offset: int = len(base)
        self.vocab_size: int = 2 * self.offset
        self.special_ids: frozenset[int] = frozenset(int(i) for i in base.all_special_ids)
        bad = [i for i in self.special_ids if not 0 <= i < self.offset]
        if bad:
            raise ValueError(f"special token ids {bad} lie outside the base vocabulary [0, {self.offset})")
        # English id -> Clone id, specials mapped to themselves (vectorised shifting for the shard builder).
        m = np.arange(self.offset, dtype=np.int64) + self.offset
        m[sorted(self.special_ids)] = sorted(self.special_ids)
        self.clone_map: np.ndarray = m

    def __len__(self) -> int:
        return self.vocab_size

    # ids ----------------------------------------------------------------------------------------------
    def _check(self, i: int) -> int:
        i = int(i)
        if not 0 <= i < self.vocab_size:
            raise ValueError(f"token id {i} is outside the English-Clone vocabulary [0, {self.vocab_size})")
        return i

    def is_clone(self, token_id: int) -> bool:
        """True for ids in the Clone half [V, 2V)."""
        return self._check(token_id) >= self.offset

    def to_clone(self, ids: Iterable[int]) -> list[int]:
        """Shift English ids to Clone; special ids and ids already in the Clone half are left as they are."""
        out = []
        for i in ids:
            i = self._check(i)
            out.append(i + self.offset if i < self.offset and i not in self.special_ids else i)
        return out

    def to_english(self, ids: Iterable[int]) -> list[int]:
        """Shift Clone ids back to English; English and special ids are left as they are."""
        out = []
        for i in ids:
            i = self._check(i)
            out.append(i - self.offset if i >= self.offset else i)
        return out

    # text ---------------------------------------------------------------------------------------------
    def encode(self, text: str, lang: str = EN) -> list[int]:
        """Token ids of `text` in `lang` ("en" or "clone"), without added BOS/EOS."""
        if lang not in (EN, CLONE):
            raise ValueError(f"lang must be {EN!r} or {CLONE!r}, got {lang!r}")
        ids = self.base.encode(text, add_special_tokens=False)
        return self.to_clone(ids) if lang == CLONE else [int(i) for i in ids]

    def decode(self, ids: Sequence[int], mark: bool = True) -> str:
        """Text of a (possibly mixed) id sequence.

        Maximal runs of English ids (special tokens included) and of Clone ids are decoded separately; with
        ``mark=True`` every whitespace-separated piece of a Clone run gets the prefix ``§`` (so the Clone of
        ``" the house"`` reads ``" §the §house"``); with ``mark=False`` Clone text reads as plain English.
        """
        parts: list[str] = []
        run: list[int] = []
        run_clone = False
        for i in ids:
            c = self.is_clone(i)
            if run and c != run_clone:
                parts.append(self._decode_run(run, run_clone, mark))
                run = []
            run_clone = c
            run.append(int(i))
        if run:
            parts.append(self._decode_run(run, run_clone, mark))
        return "".join(parts)

    def _decode_run(self, run: list[int], clone: bool, mark: bool) -> str:
        base_ids = [i - self.offset for i in run] if clone else run
        text = self.base.decode(base_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if clone and mark:
            text = _WORD.sub(lambda m: CLONE_MARK + m.group(0), text)
        return text


# corpus split ---------------------------------------------------------------------------------------------
def _doc_key(doc: Any, position: int) -> tuple[int, str]:
    """(document index, text) of a Document, a {"text": ...} dict or a plain string."""
    if isinstance(doc, str):
        return position, doc
    if isinstance(doc, dict):
        return position, doc["text"]
    return int(doc.index), doc.text


def _unit_hash(seed: int, index: int) -> float:
    h = hashlib.blake2b(f"clone-split\x00{seed}\x00{index}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2**64


def split_corpus(docs: Sequence[Any], clone_fraction: float, seed: int) -> tuple[list, list]:
    """Split documents into an English and a Clone part, disjoint by document.

    Documents are visited in the order of a hash of (seed, document index) (``Document.index``, or the
    position for plain strings/dicts); each is put into the Clone part when that brings the Clone share of
    characters closer to `clone_fraction`. The result is deterministic, within about one document of the
    target fraction, and both parts keep the input order.
    """
    if not 0.0 <= clone_fraction <= 1.0:
        raise ValueError(f"clone_fraction must be in [0, 1], got {clone_fraction}")
    keys = [_doc_key(d, p) for p, d in enumerate(docs)]
    indices = [k[0] for k in keys]
    if len(set(indices)) != len(indices):
        raise ValueError(
            "split_corpus: document indices are not unique (documents from several files? "
            "renumber them or pass plain texts)"
        )
    total = sum(len(t) for _, t in keys)
    target = clone_fraction * total
    order = sorted(range(len(docs)), key=lambda p: (_unit_hash(seed, keys[p][0]), keys[p][0]))
    is_clone = [False] * len(docs)
    chars = 0
    for p in order:
        n = len(keys[p][1])
        if abs(chars + n - target) < abs(chars - target):
            is_clone[p] = True
            chars += n
    english = [d for d, c in zip(docs, is_clone) if not c]
    clone = [d for d, c in zip(docs, is_clone) if c]
    return english, clone


# dictionary -----------------------------------------------------------------------------------------------
def token_frequencies(tokenizer: Any, texts: Iterable[str], batch_size: int = 256) -> np.ndarray:
    """Occurrences of every base id in `texts` (int64 array of length V; no BOS/EOS added)."""
    base = tokenizer.base if isinstance(tokenizer, CloneTokenizer) else tokenizer
    counts = np.zeros(len(base), dtype=np.int64)
    batch: list[str] = []

    def flush() -> None:
        ids = [np.asarray(x, dtype=np.int64) for x in base(batch, add_special_tokens=False)["input_ids"]]
        counts[:] += np.bincount(np.concatenate(ids), minlength=len(counts))
        batch.clear()

    for t in texts:
        batch.append(t)
        if len(batch) >= batch_size:
            flush()
    if batch:
        flush()
    return counts


def candidate_ids(tokenizer: Any) -> list[tuple[int, str]]:
    """(id, word) for every non-special base id whose decoded text contains a letter; word = stripped text."""
    base = tokenizer.base if isinstance(tokenizer, CloneTokenizer) else tokenizer
    specials = set(base.all_special_ids)
    out = []
    for t in range(len(base)):
        if t in specials:
            continue
        word = base.decode([t], skip_special_tokens=False, clean_up_tokenization_spaces=False).strip()
        if any(ch.isalpha() for ch in word):
            out.append((t, word))
    return out


def make_clone_table(
    tokenizer: Any,
    *,
    freqs: np.ndarray | None = None,
    top_n: int | None = None,
    fraction: float | None = None,
    heldout_fraction: float = 0.1,
    seed: int = 0,
    tokenizer_sha256: str = "",
) -> AlignmentTable:
    """The English-Clone identity dictionary t ↔ t+V over a subset of the candidate ids.

    Candidates: :func:`candidate_ids`. Subset: the `top_n` most frequent by `freqs` (ties by lower id;
    zero-frequency ids count too when fewer are seen), or a uniformly random `fraction` of the candidates
    (``round(fraction * candidates)`` ids, drawn with ``numpy.random.default_rng(seed)``). Exactly one of
    `top_n` / `fraction`. Entries are ordered by token id; entry i has words ``(word, "§" + word)``, langs
    ``("en", "clone")``, tokens ``((t,), (t + V,))`` and split ``split_of(str(t), seed, heldout_fraction)``.
    """
    base = tokenizer.base if isinstance(tokenizer, CloneTokenizer) else tokenizer
    V = len(base)
    if (top_n is None) == (fraction is None):
        raise ValueError("make_clone_table: give exactly one of top_n or fraction")
    if not 0.0 <= heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}")
    cands = candidate_ids(base)
    word_of = dict(cands)
    if top_n is not None:
        if top_n <= 0:
            raise ValueError(f"top_n must be positive, got {top_n}")
        if freqs is None:
            raise ValueError("make_clone_table: top_n needs token frequencies (freqs)")
        freqs = np.asarray(freqs)
        if freqs.shape != (V,):
            raise ValueError(f"freqs must have shape ({V},) (the base vocabulary), got {freqs.shape}")
        ranked = sorted(word_of, key=lambda t: (-int(freqs[t]), t))
        chosen = sorted(ranked[:top_n])
        selection = {"by": "top_n", "value": int(top_n)}
    else:
        assert fraction is not None
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        k = round(fraction * len(cands))
        rng = np.random.default_rng(seed)
        pick = rng.choice(len(cands), size=k, replace=False) if k else np.zeros(0, dtype=np.int64)
        chosen = sorted(cands[int(p)][0] for p in pick)
        selection = {"by": "fraction", "value": float(fraction)}
    if not chosen:
        raise ValueError(
            f"make_clone_table: the selection {selection} chose no token ids ({len(cands)} candidates)"
        )
    entries = [
        Entry(
            id=i,
            words=(word_of[t], clone_word(word_of[t])),
            langs=(EN, CLONE),
            tokens=((t,), (t + V,)),
            split=split_of(str(t), seed, heldout_fraction),
        )
        for i, t in enumerate(chosen)
    ]
    meta = {
        "kind": "clone",
        "vocab_size": 2 * V,
        "vocab_offset": V,
        "source_lang": EN,
        "selection": selection,
        "candidates": len(cands),
        "tokenizer_sha256": tokenizer_sha256,
        "dictionary_sha256": hashlib.sha256(",".join(map(str, chosen)).encode()).hexdigest(),
        "seed": int(seed),
        "heldout_fraction": float(heldout_fraction),
        "coverage": None,
        "problems": 0,
    }
    return AlignmentTable(entries, meta)


# the whole tool -------------------------------------------------------------------------------------------
def build_english_clone(
    corpus: str | Path,
    tokenizer_dir: str | Path,
    out_dir: str | Path,
    *,
    clone_fraction: float = 0.1,
    top_n: int | None = None,
    fraction: float | None = None,
    heldout_fraction: float = 0.1,
    seed: int = 0,
    text_field: str = "text",
    fmt: str | None = None,
) -> dict:
    """Write ``out_dir/en.jsonl.gz``, ``out_dir/clone.jsonl.gz`` (disjoint documents, ``{"text", ...original
    fields}``, gzip with mtime=0) and the Clone table in ``out_dir/table/``. Frequencies for `top_n` are
    counted on the English part. Returns a summary dict (docs/chars per part, table sizes, paths)."""
    from prealign_scale.text.corpus import CorpusError, check_corpus, iter_documents, write_jsonl
    from prealign_scale.text.tokenizer import load_tokenizer
    from prealign_scale.text.tokenizer import tokenizer_sha256 as _tok_sha

    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise ValueError(f"{out_dir}: is a file, not a folder (the output folder of the English-Clone data)")
    check_corpus(corpus, text_field=text_field, fmt=fmt)
    base = load_tokenizer(tokenizer_dir)
    docs = list(iter_documents(corpus, text_field=text_field, fmt=fmt))
    english, clone = split_corpus(docs, clone_fraction, seed)
    if not english or not clone:
        raise CorpusError(
            f"{corpus}: {len(docs)} documents give an empty "
            f"{'English' if not english else 'Clone'} part at clone_fraction={clone_fraction}"
        )
    freqs = token_frequencies(base, (d.text for d in english)) if top_n is not None else None
    table = make_clone_table(
        base,
        freqs=freqs,
        top_n=top_n,
        fraction=fraction,
        heldout_fraction=heldout_fraction,
        seed=seed,
        tokenizer_sha256=_tok_sha(tokenizer_dir),
    )
    out = Path(out_dir)

    def records(part: list) -> Iterable[dict]:
        for d in part:
            yield {"text": d.text, **{k: v for k, v in d.fields.items() if k != "text"}}

    write_jsonl(out / "en.jsonl.gz", records(english))
    write_jsonl(out / "clone.jsonl.gz", records(clone))
    table.save(out / "table")
    n_chars = {EN: sum(len(d.text) for d in english), CLONE: sum(len(d.text) for d in clone)}
    return {
        "corpus": str(corpus),
        "out": str(out),
        "docs": {EN: len(english), CLONE: len(clone)},
        "chars": n_chars,
        "clone_char_fraction": n_chars[CLONE] / max(1, n_chars[EN] + n_chars[CLONE]),
        "vocab_size": table.meta["vocab_size"],
        "vocab_offset": table.meta["vocab_offset"],
        "table_entries": len(table.entries),
        "table_heldout": len(table.part(HELDOUT)),
        "table_candidates": table.meta["candidates"],
        "selection": table.meta["selection"],
    }
