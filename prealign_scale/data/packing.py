"""Stage B of the shard builder: choose documents for the mixture, order them, and pack them into samples.

All of it is a pure function of the finished chunks and the seed:

1. *Mixture*: language ``l`` gets ``w_l * T`` tokens, where ``T = min_l(available_l / w_l)`` (the most a
   mixture can use without running out of any language), capped by ``total_tokens`` when given. Documents
   are taken in corpus order until the quota is reached.
2. *Order*: the chosen documents of all languages are shuffled by a permutation seeded with ``seed``, and
   concatenated into one token stream (each document ends with EOS).
3. *Packing*: sample ``g`` reads stream positions ``[g*L, g*L + L)`` as inputs and takes its targets from the
   label array at ``[g*L + 1, g*L + L + 1)`` (so consecutive samples share one boundary token: nothing is
   lost between samples). ``n_shards`` is a multiple of ``shard_multiple`` and every shard holds the same
   number of samples, so ``ranks x workers`` readers split the data evenly; the remainder is dropped and
   reported.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from prealign_scale.data.doc_chunks import ChunkArrays
from prealign_scale.data.shard_format import IGNORE_INDEX, Sample


class MixtureError(ValueError):
    pass


@dataclass
class LangDocs:
    """The processed documents of one language, in corpus order."""

    lang: str
    chunk_names: list[str]  # chunk of each document
    starts: np.ndarray  # int64 offset of each document inside its chunk
    lens: np.ndarray  # int64 tokens of each document (EOS included)
    doc_ids: list[str]

    @property
    def tokens(self) -> int:
        return int(self.lens.sum())


def mixture_quotas(langs: dict[str, LangDocs], weights: dict[str, float], total_tokens: int | None) -> dict:
    """Number of documents taken from each language, and the report that goes into the manifest."""
    avail = {lang: langs[lang].tokens for lang in weights}
    for lang, a in avail.items():
        if a == 0:
            raise MixtureError(f"mixture: language {lang!r} has no tokens after processing")
    t_max = min(avail[lang] / w for lang, w in weights.items())
    if total_tokens is not None:
        if total_tokens > t_max + 1e-9:
            short = [f"{lang}: needs {int(w * total_tokens):,}, has {avail[lang]:,}" for lang, w in weights.items()
                     if avail[lang] < w * total_tokens]
            raise MixtureError(f"mixture cannot be met for total_tokens={total_tokens:,}: " + "; ".join(short))
        t_max = float(total_tokens)
    report = {}
    for lang, w in weights.items():
        quota = w * t_max
        cum = np.cumsum(langs[lang].lens)
        # the smallest number of documents whose tokens reach the quota (all of them for the limiting language)
        n_docs = int(min(np.searchsorted(cum, quota - 1e-6) + 1, cum.size))
        report[lang] = {
            "weight": w,
            "available_tokens": avail[lang],
            "available_docs": int(cum.size),
            "docs": n_docs,
            "tokens": int(cum[n_docs - 1]),
        }
    return report


@dataclass
class Plan:
    """The document stream: which document comes at which position (arrays in stream order)."""

    chunk_names: list[str]  # the distinct chunk names
    doc_chunk: np.ndarray  # int32 index into chunk_names
    doc_start: np.ndarray  # int64 offset in chunk
    doc_len: np.ndarray  # int64
    doc_lang: np.ndarray  # int32 index into languages
    doc_ids: list[str]
    languages: list[str]
    seq_len: int
    n_shards: int
    samples_per_shard: int

    @property
    def doc_end(self) -> np.ndarray:
        return np.cumsum(self.doc_len)

    @property
    def stream_tokens(self) -> int:
        return int(self.doc_len.sum())

    def to_arrays(self) -> dict:
        return {k: getattr(self, k) for k in ("doc_chunk", "doc_start", "doc_len", "doc_lang")}


def make_plan(langs: dict[str, LangDocs], report: dict, seed: int, seq_len: int, samples_per_shard: int,
              shard_multiple: int) -> tuple[Plan, dict]:
    languages = sorted(report)
    chunk_names: list[str] = []
    chunk_index: dict[str, int] = {}
    rows = []  # (chunk idx, start, len, lang idx, doc id)
    for li, lang in enumerate(languages):
        ld = langs[lang]
        for i in range(report[lang]["docs"]):
            name = ld.chunk_names[i]
            if name not in chunk_index:
                chunk_index[name] = len(chunk_names)
                chunk_names.append(name)
            rows.append((chunk_index[name], int(ld.starts[i]), int(ld.lens[i]), li, ld.doc_ids[i]))
    order = np.random.default_rng([seed, 0x5EED]).permutation(len(rows))
    rows = [rows[i] for i in order]
    total = sum(r[2] for r in rows)
    n_samples = (total - 1) // seq_len if total > 0 else 0
    n_shards, per_shard, dropped = shard_layout(n_samples, samples_per_shard, shard_multiple)
    plan = Plan(
        chunk_names=chunk_names,
        doc_chunk=np.array([r[0] for r in rows], dtype=np.int32),
        doc_start=np.array([r[1] for r in rows], dtype=np.int64),
        doc_len=np.array([r[2] for r in rows], dtype=np.int64),
        doc_lang=np.array([r[3] for r in rows], dtype=np.int32),
        doc_ids=[r[4] for r in rows],
        languages=languages,
        seq_len=seq_len,
        n_shards=n_shards,
        samples_per_shard=per_shard,
    )
    layout = {"stream_tokens": total, "samples_available": n_samples, "samples_dropped": dropped,
              "n_shards": n_shards, "samples_per_shard": per_shard}
    return plan, layout


def shard_layout(n_samples: int, samples_per_shard: int, shard_multiple: int) -> tuple[int, int, int]:
    """(n_shards, samples per shard, dropped samples): n_shards a multiple of shard_multiple, equal shards."""
    if n_samples < shard_multiple:
        raise MixtureError(
            f"only {n_samples} samples of this seq_len: fewer than shard_multiple={shard_multiple} "
            "(one sample per shard at least); add data, shorten seq_len or lower shard_multiple")
    n_shards = max(shard_multiple, (n_samples // samples_per_shard) // shard_multiple * shard_multiple)
    per_shard = n_samples // n_shards
    return n_shards, per_shard, n_samples - n_shards * per_shard


def shard_samples(plan: Plan, shard: int, chunks: ChunkArrays) -> list[Sample]:
    """Cut shard `shard`'s samples out of the document stream."""
    L, S = plan.seq_len, plan.samples_per_shard
    a = shard * S * L  # first stream position of the shard
    b = a + S * L + 1  # one past the last label position it needs
    ends = plan.doc_end
    first = int(np.searchsorted(ends, a, side="right"))
    ids_parts, lab_parts, doc_parts, sw_parts = [], [], [], []
    pos, d = (int(ends[first - 1]) if first > 0 else 0), first
    while pos < b and d < plan.doc_len.size:
        arr = chunks.get(plan.chunk_names[plan.doc_chunk[d]])
        s, n = int(plan.doc_start[d]), int(plan.doc_len[d])
        lo, hi = max(a - pos, 0), min(b - pos, n)  # the part of document d inside [a, b)
        ids_parts.append(arr["ids"][s + lo : s + hi])
        lab_parts.append(arr["labels"][s + lo : s + hi])
        doc_parts.append(np.full(hi - lo, d, dtype=np.int64))
        sp = arr["switch_pos"]
        i0, i1 = np.searchsorted(sp, s + lo), np.searchsorted(sp, s + hi)
        sw_parts.append(np.asarray(sp[i0:i1]) - s + pos)  # stream positions of switch starts
        pos += n
        d += 1
    ids, lab = np.concatenate(ids_parts), np.concatenate(lab_parts)
    docs, sw = np.concatenate(doc_parts), np.concatenate(sw_parts)
    # switched words whose first token is an input of sample j: positions in [a + jL, a + (j+1)L)
    sw_counts = np.diff(np.searchsorted(np.sort(sw), a + np.arange(S + 1) * L))
    samples = []
    for j in range(S):
        o = j * L
        seg_docs = docs[o : o + L]
        change = np.flatnonzero(np.diff(seg_docs)) + 1  # documents appear in stream order
        segments = np.zeros(L, dtype=np.int64)
        segments[change] = 1
        segments = np.cumsum(segments)
        uniq = seg_docs[np.concatenate(([0], change))]
        n_sw = int(sw_counts[j])
        samples.append(Sample(
            input_ids=ids[o : o + L].astype(np.uint32),
            targets=lab[o + 1 : o + L + 1].astype(np.int32),
            segments=segments.astype(np.uint16),
            langs=[plan.languages[plan.doc_lang[u]] for u in uniq],
            doc_ids=[plan.doc_ids[u] for u in uniq],
            switched_words=n_sw,
        ))
    return samples


def loss_tokens(sample: Sample) -> int:
    return int(np.count_nonzero(sample.targets != IGNORE_INDEX))
