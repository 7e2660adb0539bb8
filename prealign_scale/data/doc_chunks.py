"""Stage A of the shard builder: tokenise and code-switch a chunk of documents, and store the result.

A *chunk* is a run of consecutive documents of one language (``docs_per_chunk`` of them). Its result is a
folder ``.work/chunks/{lang}-{index:06d}/`` holding, for the chunk's documents in order:

- ``ids.npy`` (uint32): switched tokens of every document, each followed by EOS;
- ``labels.npy`` (int32): the label array of :mod:`prealign_scale.alignment.codeswitch` (EOS labels itself),
  with the label of each document's first token set to -100 (no prediction across a document boundary);
- ``doc_lens.npy`` (int64): tokens per document (EOS included);
- ``switch_pos.npy`` (int64): chunk-level positions of the first token of every switched word;
- ``docs.json``: document ids and per-document switched-word counts.

A chunk folder is written under a temporary name and renamed when complete, so an interrupted build never
leaves a half-written chunk under its final name, and a resumed build skips finished chunks.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prealign_scale.alignment.codeswitch import Switcher, switch_document
from prealign_scale.data.shard_format import IGNORE_INDEX


@dataclass
class ChunkContext:
    """Everything a worker needs to process a chunk of one language (built once per worker)."""

    encoder: object  # prealign_scale.data.word_encoder: ids + word segmentation of a document
    switcher: Switcher | None  # None: no switching for this language
    p: float
    seed: int
    eos_id: int
    clone_offset: int  # > 0: this language is rendered as English-Clone (ids + offset)


def chunk_name(lang: str, index: int) -> str:
    return f"{lang}-{index:06d}"


def process_chunk(docs: list[tuple[str, str]], ctx: ChunkContext) -> dict:
    """docs: [(doc_id, text)] -> the arrays of one chunk (see module docstring)."""
    ids_parts, lab_parts, lens, sw_parts, n_sw = [], [], [], [], []
    pos = 0
    eos = np.array([ctx.eos_id], dtype=np.int64)
    for doc_id, text in docs:
        enc = ctx.encoder.encode(text, with_words=ctx.switcher is not None)
        ids = enc.ids
        if ctx.clone_offset:
            # English-Clone: the same tokens in the upper half of the vocabulary; nothing is switched.
            sw_ids, sw_lab, starts = ids + ctx.clone_offset, ids + ctx.clone_offset, np.zeros(0, np.int64)
        else:
            d = switch_document(ids, enc.word_ids, enc.word, ctx.switcher, ctx.p, ctx.seed, doc_id)
            sw_ids, sw_lab, starts = d.input_ids, d.labels, d.switch_starts
        if sw_lab.size:
            # The first token of a document is never a target: the position before it is the previous
            # document's EOS, and no loss is taken across a document boundary.
            sw_lab = sw_lab.copy()
            sw_lab[0] = IGNORE_INDEX
        ids_parts += [sw_ids, eos]
        lab_parts += [sw_lab, eos]
        sw_parts.append(starts + pos)
        n_sw.append(int(starts.size))
        lens.append(sw_ids.size + 1)
        pos += sw_ids.size + 1
    cat = lambda parts, dt: np.concatenate(parts).astype(dt) if parts else np.zeros(0, dt)
    return {
        "ids": cat(ids_parts, np.uint32),
        "labels": cat(lab_parts, np.int32),
        "doc_lens": np.asarray(lens, dtype=np.int64),
        "switch_pos": cat(sw_parts, np.int64),
        "docs": {"doc_ids": [d for d, _ in docs], "switched": n_sw},
    }


def save_chunk(folder: Path, arrays: dict) -> None:
    """Write a chunk folder atomically (temporary folder, then rename)."""
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for key in ("ids", "labels", "doc_lens", "switch_pos"):
        np.save(tmp / f"{key}.npy", arrays[key])
    (tmp / "docs.json").write_text(json.dumps(arrays["docs"]))
    if folder.exists():  # a finished twin from a concurrent rank: identical by determinism
        shutil.rmtree(tmp)
        return
    tmp.rename(folder)


def chunk_done(folder: Path) -> bool:
    return (folder / "docs.json").is_file()


def load_chunk_meta(folder: Path) -> tuple[np.ndarray, dict]:
    return np.load(folder / "doc_lens.npy"), json.loads((folder / "docs.json").read_text())


class ChunkArrays:
    """Memory-mapped access to finished chunks (stage B reads slices of documents from them)."""

    def __init__(self, root: Path):
        self.root = root
        self._open: dict[str, dict[str, np.ndarray]] = {}

    def get(self, name: str) -> dict[str, np.ndarray]:
        if name not in self._open:
            folder = self.root / name
            self._open[name] = {
                k: np.load(folder / f"{k}.npy", mmap_mode="r") for k in ("ids", "labels", "switch_pos")
            }
        return self._open[name]
