"""The phase-2 training reader: WebDataset shards -> exactly resumable micro-batches, per data-parallel rank.

Order of samples (a pure function of the manifest, ``seed``, ``dp_rank``, ``dp_world_size``, ``num_workers``
and ``micro_batch_size``):

1. Epoch ``e`` visits all shards in an order that is a pure function of ``(seed, e)``
   (`prealign_scale.data.shard_order.epoch_shard_order`; manifest order when ``shuffle_shards=False``).
2. Rank ``r`` of ``R`` takes ``order[r::R]``; its reader ``w`` of ``n = max(1, num_workers)`` takes
   ``order[r::R][w::n]``, i.e. ``K = shards / (R * n)`` shards, read in that order, samples in tar order.
3. Each reader cuts its sample stream of the epoch into micro-batches of ``micro_batch_size`` and **drops the
   incomplete last batch** (``K * samples_per_shard % micro_batch_size`` samples per reader and epoch), so
   every reader yields exactly ``B = K * samples_per_shard // micro_batch_size`` batches per epoch.
4. The DataLoader hands out batches round-robin over its workers, so batch ``i`` of an epoch on a rank is
   batch ``i // n`` of reader ``i % n``; a rank yields ``n * B`` batches per epoch. Iteration is infinite.

Because every reader's stream is deterministic, resuming is arithmetic: at position (epoch, c) reader ``w``
has delivered ``#{i < c : i % n == w}`` batches; it skips whole shards without opening them and reads past
the rest of the samples it skips inside a shard. The resumed DataLoader's worker ``p`` plays reader
``(p + c) % n``, so its round-robin continues with reader ``c % n`` exactly as the old one would have.

A change of data-parallel size (elastic resume, :meth:`ShardLoader.load_remapped_state`): the samples of the
epoch that the ranks of the old layout had not yet read are listed in the order the old run would have
consumed them (batch ``i`` of rank 0, of rank 1, ..., then batch ``i + 1``; a rank's batch ``i`` is batch
``i // n`` of its reader ``i % n``), and dealt micro-batch by micro-batch to the new ranks (micro-batch ``j``
to new rank ``j % M``). Each new rank reads its share first (the state's ``pending`` list of
``[shard index, sample index]`` micro-batches), then continues with the next epoch in its own layout. When the
count is not a multiple of ``M``, the last ranks get one all-padding micro-batch (no loss tokens). So every
sample of the interrupted epoch is read exactly once over the old and the new ranks; with the same global
batch (``M * grad_accum`` micro-batches a step), every step of the rest of the epoch even holds the same
samples as in the uninterrupted run.

Corrupt data: a shard that cannot be read completely (truncated, bad member) raises
:class:`ShardCorruptError` naming the shard and the sample key. With ``skip_corrupt=True`` each unreadable
sample becomes a *padding row* instead (``input_ids`` = EOS, ``targets`` all ``-100``, ``segments`` 0), so
batch shapes and all positions stay fixed (resume stays exact); the batch's ``skipped`` field counts them and
:attr:`ShardLoader.skipped_samples` sums them on this rank.

Integrity (``verify_sha256=True``, the default): the first time a reader process opens a shard, the file's
sha256 (streamed, :func:`~prealign_scale.data.shard_format.file_sha256`) is compared with the manifest's
record before any of its samples is used, so a changed byte that still decodes (an id inside the vocabulary)
is not trained on. A mismatch raises :class:`ShardCorruptError` naming the shard; with ``skip_corrupt=True``
every sample of that shard becomes a padding row (which of them changed is unknown), counted as above.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from prealign_scale.data.packed_masks import position_ids_from_segments
from prealign_scale.data.shard_format import (
    FORMAT_VERSION,
    IGNORE_INDEX,
    MANIFEST_NAME,
    Manifest,
    SampleFormatError,
    decode_sample,
    file_sha256,
)
from prealign_scale.data.shard_order import epoch_shard_order, remaining_epoch_batches

log = logging.getLogger(__name__)


class ShardCorruptError(RuntimeError):
    """A shard is truncated or holds an undecodable sample (the message names the shard and the key)."""


# --------------------------------------------------------------------------------------------- manifest


def load_manifest(shard_dir: str | Path) -> Manifest:
    """Read and check ``manifest.json`` of a shard folder (the fields the reader relies on)."""
    shard_dir = Path(shard_dir)
    path = shard_dir / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{shard_dir}: no {MANIFEST_NAME} in this folder; is it a shard folder written by build_shards?"
        )
    manifest = Manifest.read(shard_dir)  # ManifestError (a ValueError) naming the file and the field
    if manifest.format_version != FORMAT_VERSION:
        raise ValueError(
            f"{path}: format_version {manifest.format_version}, this reader reads {FORMAT_VERSION}"
        )
    shards = manifest.shards
    if not shards:
        raise ValueError(f"{path}: field 'shards' must be a non-empty list")
    counts = {int(s["samples"]) for s in shards}
    if len(counts) != 1:
        raise ValueError(
            f"{path}: shards have different sample counts {sorted(counts)}; the reader needs equal ones"
        )
    if counts.pop() <= 0:
        raise ValueError(f"{path}: shards must hold at least one sample")
    for i, s in enumerate(shards):
        if not (shard_dir / s["name"]).is_file():
            raise FileNotFoundError(f"{path}: shards[{i}] {s['name']!r} is missing from {shard_dir}")
    return manifest


# ----------------------------------------------------------------------------------- worker-side stream


class _Slice:
    """Picklable url splitter for WebDataset: items ``start::step`` of the stream, then drop the first ``drop``."""

    def __init__(self, start: int, step: int, drop: int = 0):
        self.start, self.step, self.drop = start, step, drop

    def __call__(self, src):
        yield from itertools.islice(itertools.islice(src, self.start, None, self.step), self.drop, None)


class _ErrorLog:
    """WebDataset exception handler: remember the error and go on with the next shard (we judge afterwards)."""

    def __init__(self):
        self.errors: list[str] = []

    def __call__(self, exn: Exception) -> bool:
        self.errors.append(" ".join(str(a) for a in exn.args) or repr(exn))
        return True

    def about(self, url: str) -> str:
        hits = [e for e in self.errors if url in e]
        return f" (tar error: {hits[0]})" if hits else ""


class _Missing:
    """Marker for a sample slot the shard should hold but that could not be read."""


class _ShardStream(IterableDataset):
    """What each DataLoader worker runs: its reader's infinite stream of collated micro-batches."""

    def __init__(
        self,
        shard_dir: Path,
        manifest: Manifest,
        micro_batch_size: int,
        dp_rank: int,
        dp_world_size: int,
        seed: int,
        n_readers: int,
        shuffle_shards: bool,
        skip_corrupt: bool,
        start_epoch: int,
        start_batch: int,
        verify_sha256: bool = True,
    ):
        super().__init__()
        self.urls = [str(shard_dir / s["name"]) for s in manifest.shards]
        # url -> the manifest's sha256, checked the first time this process opens the shard (None: no check)
        self.expected_sha256 = {url: s.get("sha256") for url, s in zip(self.urls, manifest.shards)} \
            if verify_sha256 else {}
        self.verified: set[str] = set()
        self.corrupt: set[str] = set()  # mismatched shards (skip_corrupt): skipped whole at every visit
        self.samples_per_shard = int(manifest.shards[0]["samples"])
        self.seq_len = manifest.seq_len
        self.eos_id = manifest.eos_id
        self.vocab_size = manifest.vocab_size
        self.lang_index = {lang: i for i, lang in enumerate(manifest.languages)}
        self.b, self.dp_rank, self.dp_world_size = micro_batch_size, dp_rank, dp_world_size
        self.seed, self.n_readers, self.shuffle_shards = seed, n_readers, shuffle_shards
        self.skip_corrupt = skip_corrupt
        self.start_epoch, self.start_batch = start_epoch, start_batch
        shards_per_reader = len(self.urls) // (dp_world_size * n_readers)
        self.batches_per_reader = shards_per_reader * self.samples_per_shard // micro_batch_size

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if n_workers != self.n_readers:
            raise RuntimeError(
                f"ShardLoader built for {self.n_readers} readers, DataLoader has {n_workers} workers"
            )
        reader = (worker + self.start_batch) % self.n_readers  # rotation: see the module docstring
        # batches this reader delivered before the resume point: #{i < start_batch : i % n == reader}
        done = (self.start_batch - reader + self.n_readers - 1) // self.n_readers
        for epoch in itertools.count(self.start_epoch):
            yield from self._epoch(epoch, reader, done)
            done = 0

    def _epoch(self, epoch: int, reader: int, done: int) -> Iterator[dict]:
        order = [
            self.urls[i] for i in epoch_shard_order(len(self.urls), self.seed, epoch, self.shuffle_shards)
        ]
        skip_shards, skip_samples = divmod(done * self.b, self.samples_per_shard)
        mine = order[self.dp_rank :: self.dp_world_size][reader :: self.n_readers][skip_shards:]
        if done >= self.batches_per_reader or not mine:
            return
        errors = _ErrorLog()
        raw = wds.WebDataset(
            order,
            handler=errors,
            nodesplitter=_Slice(self.dp_rank, self.dp_world_size),
            workersplitter=_Slice(reader, self.n_readers, skip_shards),
            shardshuffle=False,
            empty_check=False,
            seed=0,  # unused (no shuffle), but keeps WebDataset away from the global `random` state
        )
        slots = itertools.islice(self._slots(iter(raw), mine, errors), skip_samples, None)
        rows = (self._prepare(item) for item in slots)
        for _ in range(self.batches_per_reader - done):
            yield self._collate(list(itertools.islice(rows, self.b)))

    def _slots(self, samples: Iterator[dict], urls: list[str], errors: _ErrorLog) -> Iterator[Any]:
        """Exactly ``samples_per_shard`` items per shard, in order: the raw sample, or ``_Missing``."""
        n_per = self.samples_per_shard
        pending = next(samples, None)
        for url in urls:
            if not self._intact(url):  # skip_corrupt: drop what was read of it; every slot a padding row
                while pending is not None and pending["__url__"] == url:
                    pending = next(samples, None)
                yield from itertools.repeat(_Missing, n_per)
                continue
            n, last_key = 0, None
            while pending is not None and pending["__url__"] == url:
                n += 1
                if n > n_per:
                    raise ShardCorruptError(f"{url}: holds more than the {n_per} samples the manifest says")
                last_key = pending["__key__"]
                yield pending
                pending = next(samples, None)
            if n < n_per:
                where = f"after sample key {last_key}" if last_key else "before its first sample"
                msg = (
                    f"{url}: only {n} of {n_per} samples could be read; the shard is truncated or corrupt "
                    f"{where}{errors.about(url)}"
                )
                if not self.skip_corrupt:
                    raise ShardCorruptError(
                        f"{msg}. Rebuild the shard, or pass skip_corrupt=True to skip it."
                    )
                log.warning("%s: skipping %d samples", msg, n_per - n)
                yield from itertools.repeat(_Missing, n_per - n)
        if pending is not None:
            raise RuntimeError(f"reader got a sample of {pending['__url__']}, which is not one of its shards")

    def _intact(self, url: str) -> bool:
        """The shard's sha256 equals the manifest's (checked once per process; True when not checked).
        A mismatch raises ShardCorruptError, or with skip_corrupt logs a warning and returns False."""
        if url in self.corrupt:
            return False
        want = self.expected_sha256.get(url)
        if want is None or url in self.verified:
            return True
        try:
            got = file_sha256(url)
        except OSError as exc:
            got = f"unreadable ({exc})"
        if got == want:
            self.verified.add(url)
            return True
        msg = (f"{url}: sha256 {got[:16]}... differs from the manifest's {want[:16]}...: the shard changed after it "
               "was built (a changed byte, a truncation or another file)")
        if not self.skip_corrupt:
            raise ShardCorruptError(f"{msg}. Rebuild the shard, or pass skip_corrupt=True to skip it.")
        log.warning("%s: skipping all %d samples", msg, self.samples_per_shard)
        self.corrupt.add(url)  # reported once; every later visit skips it the same way
        return False

    def _prepare(self, item: Any) -> dict | None:
        """Raw sample -> numpy row (or None for a skipped slot)."""
        if item is _Missing:
            return None
        where = f"{item.get('__url__')}: sample {item.get('__key__')}"
        try:
            try:
                s = decode_sample(item, self.seq_len)
            except (KeyError, TypeError) as exc:  # meta.json without the expected fields
                raise SampleFormatError(f"{where}: bad meta.json: {exc!r}") from exc
            seg = s.segments.astype(np.int64)
            if seg.size and (np.any(np.diff(seg) < 0) or seg[-1] >= len(s.langs)):
                raise SampleFormatError(f"{where}: segments must be non-decreasing ids < {len(s.langs)}")
            # ids outside the vocabulary (a flipped byte, shards of another tokenizer) would otherwise fail
            # deep inside the embedding lookup, or on GPU read garbage, without naming the sample
            if s.input_ids.size and int(s.input_ids.max()) >= self.vocab_size:
                raise SampleFormatError(f"{where}: input id {int(s.input_ids.max())} >= the manifest's "
                                        f"vocab_size {self.vocab_size}")
            t = s.targets[s.targets != IGNORE_INDEX]
            if t.size and (int(t.min()) < 0 or int(t.max()) >= self.vocab_size):
                bad = int(t.min()) if int(t.min()) < 0 else int(t.max())
                raise SampleFormatError(f"{where}: target id {bad} outside [0, {self.vocab_size}) (and not "
                                        f"{IGNORE_INDEX})")
            unknown = [lang for lang in s.langs if lang not in self.lang_index]
            if unknown:
                raise SampleFormatError(f"{where}: languages {unknown} are not in the manifest's languages")
        except SampleFormatError as exc:
            if not self.skip_corrupt:
                raise ShardCorruptError(
                    f"{exc}. Rebuild the shard, or pass skip_corrupt=True to skip it."
                ) from exc
            log.warning("skipping a corrupt sample: %s", exc)
            return None
        langs = np.array([self.lang_index[lang] for lang in s.langs], dtype=np.int64)
        return {
            "input_ids": s.input_ids.astype(np.int64),
            "targets": s.targets.astype(np.int64),
            "segments": seg,
            "token_lang": langs[seg],
            "position_ids": position_ids_from_segments(seg),
            "doc_ids": list(s.doc_ids),
            "key": item["__key__"],
        }

    def _collate(self, rows: list[dict | None]) -> dict:
        if len(rows) != self.b:  # cannot happen when the manifest's counts are right
            raise RuntimeError(
                f"reader ran out of samples mid-epoch ({len(rows)} of {self.b}); manifest wrong?"
            )
        s = self.seq_len
        pad = {
            "input_ids": np.full(s, self.eos_id, dtype=np.int64),
            "targets": np.full(s, IGNORE_INDEX, dtype=np.int64),
            "segments": np.zeros(s, dtype=np.int64),
            "token_lang": np.zeros(s, dtype=np.int64),
            "position_ids": np.arange(s, dtype=np.int64),
        }
        batch: dict[str, Any] = {
            k: torch.from_numpy(np.stack([r[k] if r is not None else v for r in rows]))
            for k, v in pad.items()
        }
        batch["doc_ids"] = [r["doc_ids"] if r is not None else [] for r in rows]
        batch["keys"] = [r["key"] if r is not None else None for r in rows]
        batch["skipped"] = sum(r is None for r in rows)
        return batch


class _PendingReader:
    """Reads explicit ``[shard index, sample index]`` micro-batches (the ``pending`` part of an elastic state)
    in the main process: one open WebDataset iterator per shard, advanced (or reopened) to each sample."""

    def __init__(self, stream: _ShardStream):
        self.stream = stream
        self.open: dict[int, tuple[Iterator[dict], int, _ErrorLog]] = {}  # shard -> (iterator, next index, log)

    def _sample(self, shard: int, index: int) -> Any:
        it, nxt, errors = self.open.get(shard, (None, 0, None))
        if it is None or index < nxt:
            errors = _ErrorLog()
            # the one shard, whole (the splitters only keep WebDataset from splitting it over ranks/workers)
            it = iter(wds.WebDataset([self.stream.urls[shard]], handler=errors, shardshuffle=False,
                                     nodesplitter=_Slice(0, 1), workersplitter=_Slice(0, 1), empty_check=False,
                                     seed=0))
            nxt = 0
        item = None
        while nxt <= index:
            item = next(it, None)
            nxt += 1
            if item is None:
                break
        self.open[shard] = (it, nxt, errors)
        if item is not None:
            return item
        url = self.stream.urls[shard]
        msg = (f"{url}: sample {index} of {self.stream.samples_per_shard} could not be read; the shard is "
               f"truncated or corrupt{errors.about(url)}")
        if not self.stream.skip_corrupt:
            raise ShardCorruptError(f"{msg}. Rebuild the shard, or pass skip_corrupt=True to skip it.")
        log.warning("%s: skipping it", msg)
        return _Missing

    def batch(self, refs: list[list[int]]) -> dict:
        """One micro-batch: the listed samples; an empty list is an all-padding micro-batch (not "skipped")."""
        if not refs:
            out = self.stream._collate([None] * self.stream.b)
            out["skipped"] = 0
            return out
        return self.stream._collate([self.stream._prepare(self._sample(i, j)) for i, j in refs])


# ------------------------------------------------------------------------------------------ the loader


def _ignore_preemption_signals(_worker_id: int) -> None:
    """DataLoader workers ignore SIGTERM/SIGUSR1: a cluster's pre-emption signal reaches the whole process
    group, and the training process must finish its step and checkpoint with its workers still alive (it
    shuts them down itself when it exits)."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)


class ShardLoader:
    """Infinite, exactly resumable iterator of phase-2 micro-batches for one data-parallel rank.

    Each batch is a dict: ``input_ids``, ``targets`` (stored next-token targets, used as they are: never
    shifted), ``segments``, ``token_lang`` (index into ``Manifest.languages`` of each token's document
    language), ``position_ids`` (restart at 0 at every document start in a sample): LongTensor [b, s];
    ``doc_ids``: list (per sample) of lists of document ids; ``keys``: sample keys (None for a skipped slot);
    ``skipped``: number of padding rows that replace unreadable samples (only with ``skip_corrupt``).
    ``verify_sha256``: check each shard against the manifest's sha256 the first time a reader opens it (see
    the module docstring); the manifest must then record one for every shard.

    Requirements (checked): the shard count is a multiple of ``dp_world_size * max(1, num_workers)`` and every
    reader gets at least one full batch per epoch; the incomplete last batch of each reader and epoch is
    dropped (see the module docstring). ``state_dict()`` is the same on every rank except
    ``skipped_samples`` (informational); ``load_state_dict`` refuses a state of a different configuration.
    ``iter(loader)`` always starts at the current position (a fresh DataLoader each time). A state saved by
    another data-parallel size: :meth:`load_remapped_state`.
    """

    def __init__(
        self,
        shard_dir: str | Path,
        micro_batch_size: int,
        *,
        dp_rank: int,
        dp_world_size: int,
        seed: int,
        num_workers: int = 2,
        prefetch_factor: int = 2,
        shuffle_shards: bool = True,
        skip_corrupt: bool = False,
        pin_memory: bool = False,
        verify_sha256: bool = True,
    ):
        self.shard_dir = Path(shard_dir)
        self.manifest = load_manifest(self.shard_dir)
        self.verify_sha256 = verify_sha256
        if verify_sha256:
            unrecorded = [i for i, s in enumerate(self.manifest.shards) if not s.get("sha256")]
            if unrecorded:
                raise ValueError(f"{self.shard_dir / MANIFEST_NAME}: shards[{unrecorded[0]}] records no sha256 to "
                                 "verify the shard against; rebuild the shards, or turn the check off "
                                 "(verify_sha256=False, run config data.verify_sha256=false)")
        if micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
        if not (dp_world_size >= 1 and 0 <= dp_rank < dp_world_size):
            raise ValueError(
                f"need 0 <= dp_rank < dp_world_size, got dp_rank={dp_rank}, dp_world_size={dp_world_size}"
            )
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.micro_batch_size, self.dp_rank, self.dp_world_size = micro_batch_size, dp_rank, dp_world_size
        self.seed, self.num_workers, self.prefetch_factor = seed, num_workers, prefetch_factor
        self.shuffle_shards, self.skip_corrupt, self.pin_memory = shuffle_shards, skip_corrupt, pin_memory
        self.n_readers = max(1, num_workers)
        n_shards = len(self.manifest.shards)
        readers = dp_world_size * self.n_readers
        if n_shards % readers:
            need = -(-n_shards // readers) * readers
            raise ValueError(
                f"{self.shard_dir}: {n_shards} shards cannot be split evenly over dp_world_size={dp_world_size} x "
                f"max(1, num_workers={num_workers}) = {readers} readers; the shard count must be a multiple of "
                f"{readers} (e.g. {need}): rebuild the shards or change num_workers"
            )
        self.samples_per_shard = int(self.manifest.shards[0]["samples"])
        self.batches_per_reader = (n_shards // readers) * self.samples_per_shard // micro_batch_size
        if self.batches_per_reader < 1:
            raise ValueError(
                f"{self.shard_dir}: each of the {readers} readers gets {n_shards // readers * self.samples_per_shard} "
                f"samples per epoch, fewer than micro_batch_size={micro_batch_size}"
            )
        self.epoch, self.batches, self.skipped_samples = 0, 0, 0
        self.pending: list[list[list[int]]] = []  # micro-batches to read before (epoch, batches): elastic resume

    @property
    def languages(self) -> list[str]:
        return list(self.manifest.languages)

    @property
    def batches_per_epoch(self) -> int:
        """Micro-batches this rank yields per epoch (the same on every rank)."""
        return self.n_readers * self.batches_per_reader

    def _fingerprint(self) -> dict:
        return {
            "seed": self.seed,
            "dp_world_size": self.dp_world_size,
            "readers": self.n_readers,
            "micro_batch_size": self.micro_batch_size,
            "shards": len(self.manifest.shards),
            "samples_per_shard": self.samples_per_shard,
            "shuffle_shards": self.shuffle_shards,
        }

    def state_dict(self) -> dict:
        """The position: (epoch, micro-batches this rank consumed in it), plus the configuration it belongs to."""
        return {
            "epoch": self.epoch,
            "batches": self.batches,
            "skipped_samples": self.skipped_samples,
            "pending": [list(map(list, mb)) for mb in self.pending],
            "config": self._fingerprint(),
        }

    def load_state_dict(self, state: dict) -> None:
        mine = self._fingerprint()
        theirs = state.get("config", {})
        diff = {k: (theirs.get(k), v) for k, v in mine.items() if theirs.get(k) != v}
        if diff:
            raise ValueError(
                f"ShardLoader state was saved with another configuration: {{key: (saved, now)}} {diff}"
            )
        if not 0 <= int(state["batches"]) < self.batches_per_epoch:
            raise ValueError(
                f"ShardLoader state: batches={state['batches']} outside [0, {self.batches_per_epoch})"
            )
        self.epoch, self.batches = int(state["epoch"]), int(state["batches"])
        self.skipped_samples = int(state.get("skipped_samples", 0))
        self.pending = [list(map(list, mb)) for mb in state.get("pending", [])]

    def load_remapped_state(self, states: list[dict]) -> None:
        """Continue from the states of a run with another data-parallel size (one state per old rank, in rank
        order): this rank reads its share of the rest of the old epoch, then the next epochs in its own layout
        (module docstring). The data (shards, seed, shuffling) and micro_batch_size must be the same."""
        mine, theirs = self._fingerprint(), states[0].get("config", {})
        keep = ("seed", "micro_batch_size", "shards", "samples_per_shard", "shuffle_shards")
        diff = {k: (theirs.get(k), mine[k]) for k in keep if theirs.get(k) != mine[k]}
        if diff:
            raise ValueError(f"ShardLoader state cannot be remapped to another rank count: it was saved with "
                             f"another data configuration: {{key: (saved, now)}} {diff}")
        rest = remaining_epoch_batches(states, self.manifest)
        per_rank = -(-len(rest) // self.dp_world_size)
        share = rest[self.dp_rank :: self.dp_world_size]
        self.pending = share + [[]] * (per_rank - len(share))  # padding micro-batches keep the ranks in step
        self.epoch = int(states[0]["epoch"]) + (1 if int(states[0]["batches"]) > 0 else 0)
        self.batches = 0
        self.skipped_samples = sum(int(s.get("skipped_samples", 0)) for s in states) if self.dp_rank == 0 else 0

    def __iter__(self) -> Iterator[dict]:
        if self.pending:
            reader = _PendingReader(self._stream())
            while self.pending:
                batch = reader.batch(self.pending[0])
                self.pending = self.pending[1:]
                self.skipped_samples += batch["skipped"]
                yield batch
        yield from self._iter_layout()

    def _stream(self) -> _ShardStream:
        return _ShardStream(
            self.shard_dir,
            self.manifest,
            self.micro_batch_size,
            self.dp_rank,
            self.dp_world_size,
            self.seed,
            self.n_readers,
            self.shuffle_shards,
            self.skip_corrupt,
            self.epoch,
            self.batches,
            self.verify_sha256,
        )

    def _iter_layout(self) -> Iterator[dict]:
        """This rank's batches in its own layout, from (epoch, batches)."""
        stream = self._stream()
        loader = DataLoader(
            stream,
            batch_size=None,
            num_workers=self.num_workers,
            worker_init_fn=_ignore_preemption_signals if self.num_workers > 0 else None,
            pin_memory=self.pin_memory,
            prefetch_factor=self.prefetch_factor if self.num_workers > 0 else None,
            # its own generator: the loader draws its workers' base seed from it when the iterator is made,
            # which would otherwise advance the global torch RNG (a resume makes it after restoring RNG
            # states; nothing here uses worker seeds: the stream is a function of (seed, shard, sample))
            generator=torch.Generator().manual_seed(self.seed),
        )
        batches = iter(loader)
        try:
            for batch in batches:
                self.skipped_samples += batch["skipped"]
                self.batches += 1
                if self.batches == self.batches_per_epoch:
                    self.epoch, self.batches = self.epoch + 1, 0
                yield batch
        finally:
            # Stop the workers now: left to the garbage collector after a worker error (the exception's
            # traceback keeps the iterator alive), the shutdown waits 5 s per worker on closed queues.
            shutdown = getattr(batches, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
