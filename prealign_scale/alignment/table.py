"""The alignment table: entries of mutually aligned words with their mid-sentence token ids.

On disk a table is a folder (a documented contract, see docs/formats.md):

- ``entries.jsonl``: one entry per line,
  ``{"id": 17, "words": ["bank", "Bank"], "langs": ["en", "de"], "tokens": [[1203], [88, 412]], "split": "align"}``.
  All words of an entry are mutual translations; ``tokens[i]`` is the mid-sentence tokenisation of
  ``words[i]`` (leading space for byte-level BPE, no BOS).
- ``meta.json``: how the table was made: ``kind`` ("dictionary" or "clone"), ``tokenizer_sha256``,
  ``dictionary_sha256``, ``vocab_size`` (ids in the model's vocabulary, 2V for English-Clone),
  ``vocab_offset`` (V for English-Clone, else 0), ``source_lang``, ``heldout_fraction``, ``seed``,
  ``split_rule`` (dictionary tables: how the split was made), ``coverage`` (a report against a corpus
  sample, or null), ``problems`` (count of bad input lines), ``counts`` (incl. ``groups``).

The split into an ``align`` part (used by phase 1 and by code-switching) and a ``heldout`` part (for the
unseen-word probes) is a pure function of the entries and the seed. Dictionary tables split whole groups of
entries that share a normalised word (``prealign_scale.alignment.build_table.leak_free_splits``), so no
held-out word is trained; English-Clone tables, whose entries are single distinct token ids, split each
entry by :func:`split_of` (seed, entry key).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

ALIGN, HELDOUT = "align", "heldout"


@dataclass(frozen=True)
class Entry:
    """One dictionary entry: words that translate each other, with their token ids."""

    id: int
    words: tuple[str, ...]
    langs: tuple[str, ...]
    tokens: tuple[tuple[int, ...], ...]
    split: str = ALIGN

    def __post_init__(self):
        if not (len(self.words) == len(self.langs) == len(self.tokens)):
            raise ValueError(f"entry {self.id}: words, langs and tokens differ in length")
        if len(self.words) < 2:
            raise ValueError(f"entry {self.id}: needs at least two words, got {list(self.words)}")
        if any(len(t) == 0 for t in self.tokens):
            raise ValueError(f"entry {self.id}: a word has no tokens: {list(self.words)}")
        if self.split not in (ALIGN, HELDOUT):
            raise ValueError(f"entry {self.id}: split must be {ALIGN!r} or {HELDOUT!r}, got {self.split!r}")

    def to_json(self) -> dict:
        d = asdict(self)
        d["words"], d["langs"] = list(self.words), list(self.langs)
        d["tokens"] = [list(t) for t in self.tokens]
        return d

    @classmethod
    def from_json(cls, d: dict) -> Entry:
        return cls(
            id=int(d["id"]),
            words=tuple(d["words"]),
            langs=tuple(d["langs"]),
            tokens=tuple(tuple(int(x) for x in t) for t in d["tokens"]),
            split=d.get("split", ALIGN),
        )


def split_of(key: str, seed: int, heldout_fraction: float) -> str:
    """Deterministic align/heldout assignment of an entry from its key (e.g. the sorted words)."""
    h = hashlib.blake2b(f"{seed}\x00{key}".encode(), digest_size=8).digest()
    u = int.from_bytes(h, "little") / 2**64
    return HELDOUT if u < heldout_fraction else ALIGN


@dataclass
class AlignmentTable:
    entries: list[Entry]
    meta: dict = field(default_factory=dict)

    def part(self, split: str) -> list[Entry]:
        return [e for e in self.entries if e.split == split]

    @property
    def vocab_offset(self) -> int:
        return int(self.meta.get("vocab_offset", 0))

    def save(self, folder: str | Path) -> None:
        """Write entries.jsonl and meta.json (each to a temporary name, then renamed)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / "entries.jsonl.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(e.to_json(), ensure_ascii=False) + "\n" for e in self.entries)
        tmp.replace(folder / "entries.jsonl")
        tmp = folder / "meta.json.tmp"
        tmp.write_text(json.dumps(self.meta, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
        tmp.replace(folder / "meta.json")

    @classmethod
    def load(cls, folder: str | Path) -> AlignmentTable:
        folder = Path(folder)
        path = folder / "entries.jsonl"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no alignment table here (expected entries.jsonl + meta.json)")
        entries = []
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    entries.append(Entry.from_json(json.loads(line)))
                except (ValueError, KeyError, TypeError) as exc:
                    raise ValueError(f"{path}:{lineno}: bad table entry: {exc}") from exc
        meta_path = folder / "meta.json"
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        if not entries:
            raise ValueError(f"{path}: the alignment table is empty")
        return cls(entries, meta)

    def sha256(self) -> str:
        """Content hash of the entries (what a shard manifest records as the dictionary hash)."""
        h = hashlib.sha256()
        for e in self.entries:
            h.update(json.dumps(e.to_json(), sort_keys=True, ensure_ascii=False).encode())
            h.update(b"\n")
        return h.hexdigest()
