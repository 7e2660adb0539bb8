"""Check a shard folder against its manifest and name every bad shard (and why).

Every shard is checked, whatever the earlier ones hold: a shard that cannot be read to its end (truncated
tar, undecodable member, a meta.json without its fields) is reported with the sample where reading stopped,
and checking goes on with the next shard. Per sample, the checks are those of the training reader
(shard_reader._ShardStream._prepare) and more: seq_len, id ranges, segments 0, 1, 2, ... with one ``langs``
and one ``doc_ids`` entry per segment, languages among the manifest's; per shard: sha256, key order, and the
record's counts (samples, tokens, loss_tokens, switched_words, lang_tokens).
"""

from __future__ import annotations

import hashlib
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from prealign_scale.data.shard_format import (
    IGNORE_INDEX,
    MANIFEST_NAME,
    SHARD_RECORD_FIELDS,
    Manifest,
    ManifestError,
    SampleFormatError,
    decode_sample,
    sample_key,
)


@dataclass
class VerifyReport:
    folder: str
    shards_checked: int = 0
    samples_checked: int = 0
    problems: dict[str, list[str]] = field(default_factory=dict)  # shard name -> problems

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, shard: str, msg: str) -> None:
        self.problems.setdefault(shard, []).append(msg)

    def lines(self) -> list[str]:
        if self.ok:
            return [(f"OK: {self.shards_checked} shards, {self.samples_checked:,} samples match {self.folder}/"
                     f"{MANIFEST_NAME}")]
        out = [f"BAD: {len(self.problems)} of {self.shards_checked} shards in {self.folder} have problems:"]
        for shard, msgs in sorted(self.problems.items()):
            out += [f"  {shard}: {m}" for m in msgs]
        return out


def iter_tar_samples(path: Path):
    """Group a tar's members by key (the WebDataset convention: key = name up to the first dot)."""
    current, key = {}, None
    with tarfile.open(path, "r") as tar:
        for member in tar:
            if not member.isfile():
                continue
            k, _, ext = member.name.partition(".")
            if key is not None and k != key:
                yield current
                current = {}
            key = k
            current["__key__"] = k
            current["__url__"] = str(path)
            current[ext] = tar.extractfile(member).read()
    if current:
        yield current


def verify_shards(folder: str | Path) -> VerifyReport:
    folder = Path(folder)
    report = VerifyReport(str(folder))
    try:
        data = Manifest.load_json(folder)
    except FileNotFoundError:
        report.add(MANIFEST_NAME, "missing: not a finished shard build (run data_tools/build_shards.py)")
        return report
    except ManifestError as exc:
        report.add(MANIFEST_NAME, f"not valid JSON: {exc.__cause__}")
        return report
    bad = Manifest.problems_of(data, SHARD_RECORD_FIELDS)
    if bad:
        report.add(MANIFEST_NAME, bad[0])
        return report
    manifest = Manifest.from_dict(data)
    seq_len, vocab, languages = manifest.seq_len, manifest.vocab_size, set(manifest.languages)
    listed = {s["name"] for s in manifest.shards}
    for extra in sorted(p.name for p in folder.glob("shard-*.tar") if p.name not in listed):
        report.add(extra, "not listed in the manifest")
    for index, rec in enumerate(manifest.shards):
        report.shards_checked += 1
        _verify_one(folder, index, rec, seq_len, vocab, languages, report)
    return report


def _verify_one(folder: Path, index: int, rec: dict, seq_len: int, vocab: int, languages: set[str],
                report: VerifyReport) -> None:
    name = rec["name"]
    path = folder / name
    if not path.is_file():
        report.add(name, "missing")
        return
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != rec["sha256"]:
        report.add(name, "sha256 differs from the manifest (corrupted or modified)")
    n = tokens = loss_tokens = switched = 0
    lang_tokens: dict[str, int] = {}
    try:
        for j, raw in enumerate(iter_tar_samples(path)):
            where = f"sample {raw.get('__key__')}"
            if raw.get("__key__") != sample_key(index, j):
                report.add(name, f"{where}: expected key {sample_key(index, j)}")
            s = decode_sample(raw, seq_len=seq_len)
            n += 1
            tokens += s.seq_len
            loss_tokens += s.loss_tokens
            switched += s.switched_words
            if s.input_ids.size and int(s.input_ids.max()) >= vocab:
                report.add(name, f"{where}: input id {int(s.input_ids.max())} >= vocab_size {vocab}")
            t = s.targets[s.targets != IGNORE_INDEX]
            if t.size and (int(t.min()) < 0 or int(t.max()) >= vocab):
                report.add(name, f"{where}: target ids outside [0, {vocab}) other than {IGNORE_INDEX}")
            steps = np.diff(s.segments.astype(np.int64))
            if s.segments.size and (s.segments[0] != 0 or ((steps != 0) & (steps != 1)).any()):
                report.add(name, f"{where}: segments must start at 0 and grow by 0 or 1")
                continue
            n_segments = int(s.segments[-1]) + 1 if s.segments.size else 0
            if not (len(s.langs) == len(s.doc_ids) == n_segments):
                report.add(name, f"{where}: {n_segments} segments but meta.json has {len(s.langs)} langs and "
                                 f"{len(s.doc_ids)} doc_ids (one of each per segment)")
                continue
            unknown = sorted(set(s.langs) - languages)
            if unknown:
                report.add(name, f"{where}: meta.json langs {unknown} are not in the manifest's languages "
                                 f"{sorted(languages)}")
            for lang, count in zip(s.langs, np.bincount(s.segments, minlength=n_segments).tolist()):
                lang_tokens[lang] = lang_tokens.get(lang, 0) + count
    except SampleFormatError as exc:
        report.add(name, f"{exc} (checking of this shard stopped after {n} samples)")
        return
    except (tarfile.TarError, OSError, EOFError) as exc:
        report.add(name, f"unreadable after {n} samples: {exc}")
        return
    for what, got in (("samples", n), ("tokens", tokens), ("loss_tokens", loss_tokens),
                      ("switched_words", switched), ("lang_tokens", dict(sorted(lang_tokens.items())))):
        if what in rec and got != rec[what]:
            report.add(name, f"{what}: {got} in the shard, {rec[what]} in the manifest")
    report.samples_checked += n
