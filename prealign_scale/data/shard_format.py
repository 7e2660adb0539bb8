"""The shard sample format and the manifest schema: the one place that defines the on-disk contract.

Used by the shard writer, the training reader, the verifier and the tests. Documented in docs/formats.md.

A shard is a WebDataset tar file ``shard-000042.tar``. Each sample has the key ``"{shard:06d}-{index:06d}"``
and four members:

- ``input_ids.bin``: uint32 little-endian, ``seq_len`` values: the (code-switched) model input.
- ``targets.bin``: int32 little-endian, ``seq_len`` values: the next-token target of every position,
  ``-100`` where no loss is taken. Targets are stored explicitly (input-only code-switching: a switched
  word is never a target; the target at the position before it is the ORIGINAL word's first token).
  Readers use them as they are: no label shift.
- ``segments.bin``: uint16 little-endian, ``seq_len`` values: the index, within the sample, of the document
  each input token belongs to (0, 1, 2, ...). The EOS that ends a document belongs to that document, and
  the target at an EOS position is -100 (no loss across a document boundary).
- ``meta.json``: ``{"langs": [...], "doc_ids": [...], "switched_words": n}``: the language and source
  document id of each segment, and the number of switched words whose first token is in this sample.

``manifest.json`` (next to the shards) holds the build config, hashes, and one record per shard: the
:class:`Manifest` below (``write`` / ``read`` / ``validate``), with one list of required fields
(:data:`MANIFEST_FIELDS`) and of per-shard record fields (:data:`SHARD_RECORD_FIELDS`).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from prealign_scale.alignment.codeswitch import IGNORE_INDEX  # target without loss (its home: the switcher)

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"

INPUT_DTYPE = np.dtype("<u4")
TARGET_DTYPE = np.dtype("<i4")
SEGMENT_DTYPE = np.dtype("<u2")
MEMBERS = ("input_ids.bin", "targets.bin", "segments.bin", "meta.json")


HASH_CHUNK = 1 << 20  # bytes read at a time by file_sha256


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, streamed in HASH_CHUNK pieces (never the whole file in memory): what a manifest's
    shard record holds in ``sha256``."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


def sample_key(shard: int, index: int) -> str:
    return f"{shard:06d}-{index:06d}"


@dataclass
class Sample:
    """One packed training sample (numpy arrays of length seq_len)."""

    input_ids: np.ndarray  # uint32
    targets: np.ndarray  # int32, IGNORE_INDEX = no loss
    segments: np.ndarray  # uint16
    langs: list[str]
    doc_ids: list[str]
    switched_words: int

    @property
    def seq_len(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def loss_tokens(self) -> int:
        return int((self.targets != IGNORE_INDEX).sum())


def encode_sample(key: str, s: Sample) -> dict:
    """Sample -> the dict that ``webdataset.ShardWriter.write`` takes (bytes values)."""
    n = s.seq_len
    if not (s.targets.shape == s.segments.shape == (n,)):
        raise ValueError(f"sample {key}: input_ids, targets and segments must all have length {n}")
    n_segments = int(s.segments.max()) + 1 if n else 0
    if len(s.langs) != n_segments or len(s.doc_ids) != n_segments:
        raise ValueError(f"sample {key}: {n_segments} segments but {len(s.langs)} langs / {len(s.doc_ids)} doc ids")
    meta = {"langs": list(s.langs), "doc_ids": list(s.doc_ids), "switched_words": int(s.switched_words)}
    return {
        "__key__": key,
        "input_ids.bin": np.ascontiguousarray(s.input_ids, dtype=INPUT_DTYPE).tobytes(),
        "targets.bin": np.ascontiguousarray(s.targets, dtype=TARGET_DTYPE).tobytes(),
        "segments.bin": np.ascontiguousarray(s.segments, dtype=SEGMENT_DTYPE).tobytes(),
        "meta.json": json.dumps(meta, separators=(",", ":"), ensure_ascii=False).encode(),
    }


class SampleFormatError(ValueError):
    """A sample that does not follow this format; the message names the shard, the sample key and the part."""


def decode_sample(d: dict, seq_len: int | None = None) -> Sample:
    """The raw dict that ``webdataset.WebDataset`` yields (bytes values) -> Sample.

    Raises SampleFormatError naming the shard (``__url__``) and key when a member is missing or malformed,
    including a meta.json that is not an object with ``langs`` and ``doc_ids`` (lists of strings) and
    ``switched_words`` (an integer >= 0). Cross-checks between members (segments vs langs) are the callers'.
    """
    where = f"{d.get('__url__', '?')}: sample {d.get('__key__', '?')}"
    missing = [m for m in MEMBERS if m not in d]
    if missing:
        raise SampleFormatError(f"{where}: missing member(s) {missing}")
    try:
        ids = np.frombuffer(d["input_ids.bin"], dtype=INPUT_DTYPE)
        tgt = np.frombuffer(d["targets.bin"], dtype=TARGET_DTYPE)
        seg = np.frombuffer(d["segments.bin"], dtype=SEGMENT_DTYPE)
        meta = json.loads(d["meta.json"])
    except (ValueError, UnicodeDecodeError) as exc:
        raise SampleFormatError(f"{where}: undecodable member: {exc}") from exc
    if not (ids.shape == tgt.shape == seg.shape):
        raise SampleFormatError(f"{where}: member lengths differ ({ids.size}, {tgt.size}, {seg.size})")
    if seq_len is not None and ids.size != seq_len:
        raise SampleFormatError(f"{where}: {ids.size} tokens, expected seq_len={seq_len}")
    if not isinstance(meta, dict):
        raise SampleFormatError(f"{where}: meta.json must be a JSON object, got {type(meta).__name__}")
    for key in ("langs", "doc_ids"):
        value = meta.get(key)
        if not (isinstance(value, list) and all(isinstance(x, str) for x in value)):
            got = "missing" if key not in meta else f"got {json.dumps(value)[:60]}"
            raise SampleFormatError(f"{where}: meta.json field {key!r} must be a list of strings ({got})")
    sw = meta.get("switched_words")
    if not (isinstance(sw, int) and not isinstance(sw, bool) and sw >= 0):
        got = "missing" if "switched_words" not in meta else f"got {json.dumps(sw)[:60]}"
        raise SampleFormatError(f"{where}: meta.json field 'switched_words' must be an integer >= 0 ({got})")
    return Sample(ids, tgt, seg, meta["langs"], meta["doc_ids"], sw)


# --------------------------------------------------------------------------------------------- manifest

# The fields every reader relies on (name -> JSON type), and those of each shard record.
MANIFEST_FIELDS: dict[str, type] = {"format_version": int, "seq_len": int, "vocab_size": int, "languages": list,
                                    "eos_id": int, "shards": list}
SHARD_RECORD_FIELDS = ("name", "sha256", "samples", "tokens", "loss_tokens", "switched_words")  # + lang_tokens
READ_RECORD_FIELDS = ("name", "samples")  # what reading the samples needs (the verifier checks them all)


class ManifestError(ValueError):
    """A manifest.json that is not valid JSON or lacks a field; the message names the file and the field."""


@dataclass
class Manifest:
    """``manifest.json`` of a shard folder (docs/formats.md). The first six fields are required
    (:data:`MANIFEST_FIELDS`); the rest describe the build and are written by the builder."""

    format_version: int
    seq_len: int
    vocab_size: int  # token ids are < vocab_size (tokenizer size, doubled for English-Clone)
    languages: list[str]  # sorted; a sample's meta.json langs are among these
    eos_id: int
    shards: list[dict]  # one record per shard: SHARD_RECORD_FIELDS (+ lang_tokens)
    vocab_offset: int | None = None  # V of English-Clone (clone id = id + V), 0 without; None: not recorded
    pad_id: int | None = None
    seed: int | None = None
    build: dict | None = None  # the BuildConfig (BuildConfig.to_manifest)
    tokenizer_sha256: str | None = None
    dictionary_sha256: str | None = None
    mixture: dict | None = None
    layout: dict | None = None
    totals: dict | None = None  # samples, tokens, loss_tokens, switched_words over all shards

    @staticmethod
    def problems_of(data: Any, record_fields: tuple[str, ...] = READ_RECORD_FIELDS) -> list[str]:
        """What keeps a parsed manifest.json from being used: missing or mistyped fields, shard records
        without `record_fields`. Empty when it is usable."""
        if not isinstance(data, dict):
            return ["not a JSON object"]
        problems = [f"field {key!r} missing or not a {kind.__name__}" for key, kind in MANIFEST_FIELDS.items()
                    if not isinstance(data.get(key), kind) or isinstance(data.get(key), bool)]
        for i, rec in enumerate(data.get("shards") if isinstance(data.get("shards"), list) else []):
            missing = [k for k in record_fields if not isinstance(rec, dict) or k not in rec]
            if missing:
                problems.append(f"shards[{i}]: missing field(s) {missing}")
        return problems

    def validate(self) -> list[str]:
        """Problems of this manifest (see :meth:`problems_of`) plus the format version; empty when usable."""
        problems = self.problems_of(self.to_dict())
        if not problems and self.format_version != FORMAT_VERSION:
            problems.append(f"format_version {self.format_version}, this code reads {FORMAT_VERSION}")
        return problems

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Manifest:
        """The known fields of a parsed manifest.json (extra ones are ignored); no checks (see validate)."""
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})

    @staticmethod
    def load_json(folder: str | Path) -> Any:
        """The parsed manifest.json of `folder`: FileNotFoundError when there is none, ManifestError naming
        the file when it is not valid JSON."""
        path = Path(folder) / MANIFEST_NAME
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise ManifestError(f"{path}: not valid JSON: {exc}") from exc

    @classmethod
    def read(cls, folder: str | Path) -> Manifest:
        """Read and check ``folder/manifest.json``: FileNotFoundError when absent, else ManifestError naming the
        file and the first bad field (``shards/manifest.json: field 'seq_len' missing or not a int``)."""
        path = Path(folder) / MANIFEST_NAME
        data = cls.load_json(folder)
        problems = cls.problems_of(data)
        if problems:
            raise ManifestError(f"{path}: {problems[0]}")
        return cls.from_dict(data)

    def write(self, folder: str | Path) -> None:
        """Write ``folder/manifest.json`` (sorted keys; to a temporary name, then renamed)."""
        path = Path(folder) / MANIFEST_NAME
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(self.to_dict(), indent=1, sort_keys=True, ensure_ascii=False) + "\n")
        tmp.replace(path)
