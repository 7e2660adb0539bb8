"""The shard builder: corpora -> tokenised, code-switched, packed samples in WebDataset shards + manifest.

    stage A  (chunks, parallel)   read corpora -> tokenise -> code-switch -> .work/chunks/{lang}-{i}/
    plan     (rank 0)             mixture quotas, document order, shard layout -> .work/plan.npz
    stage B  (shards, parallel)   cut samples from the chunks -> shard-{i}.tar (+ .work/shards/{i}.json)
    manifest (rank 0)             manifest.json from the per-shard records

Parallelism: a pool of worker processes per rank, and MPI ranks (mpi4py, under mpirun or srun --mpi=pmix)
splitting chunks and shards round-robin. Every output byte is a pure function of (inputs, config, seed): the
same inputs give byte-identical shards and manifest whatever the number of workers or ranks. Every unit of
work (chunk, shard, manifest) is written to a temporary name and renamed when complete, so a killed build
resumes where it stopped and never leaves a truncated file under a final name.

The folder's state (``.work/``): ``config.sha256`` (the build's fingerprint: config + input sizes and mtimes),
``chunk_keys.json`` (per language, the identity of its chunks: inputs and tokenisation settings, not the
mixture or layout), and ``stopped.txt`` while the last attempt ended on a BuildError (a bad corpus line, a
mixture the real token counts cannot meet). The same config resumes. A different config replaces the build
when it stopped on an error or with ``overwrite``, keeping the chunks whose key is unchanged (a new mixture
or layout re-plans without re-tokenising; a corrected corpus re-tokenises that language only); otherwise a
different config is refused (the folder may hold a finished build, or one still running).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from prealign_scale.data import doc_chunks, packing
from prealign_scale.data.build_config import BuildConfig, BuildError, check_quotas, prepare
from prealign_scale.data.shard_format import (
    FORMAT_VERSION,
    Manifest,
    encode_sample,
    sample_key,
    shard_name,
)
from prealign_scale.dist_mpi import LauncherError, World, mpi_world
from prealign_scale.text.corpus import CorpusError

__all__ = ["BuildConfig", "BuildError", "build_shards"]


# ----------------------------------------------------------------------------------------------- workers
# lang -> context, set by the rank's main process before its pool forks: workers inherit it (an initializer
# that could fail would make the pool restart its workers forever).
_CTX: dict[str, doc_chunks.ChunkContext] = {}
STOPPED = "stopped.txt"  # in .work/: the last attempt ended on this BuildError (see the module docstring)


def _init_worker() -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per worker: the pool is the parallelism


def _run_chunk(job: tuple[str, int, list[tuple[str, str]], str]) -> tuple[str, int, int]:
    lang, _index, docs, folder = job
    arrays = doc_chunks.process_chunk(docs, _CTX[lang])
    doc_chunks.save_chunk(Path(folder), arrays)
    return lang, len(docs), int(arrays["ids"].size)


def _run_shard(job: tuple[int, str]) -> dict:
    shard, out_dir = job
    return write_shard(Path(out_dir), shard)


# ------------------------------------------------------------------------------------------------ stage A
def _chunk_jobs(cfg: BuildConfig, work: Path, world: World):
    """Yield this rank's unfinished chunks as (lang, index, [(doc_id, text)], folder)."""
    from prealign_scale.text.corpus import iter_documents

    facts_lang = cfg.resolved_facts_lang()
    for lang, paths in cfg.corpora.items():
        buf, index, doc_index = [], 0, 0
        if lang == facts_lang:  # knowledge facts first: always inside the language's quota
            for i, text in enumerate(cfg.fact_documents()):
                buf.append((f"{lang}/fact/{i}", text))
                if len(buf) == cfg.docs_per_chunk:
                    yield from _maybe_job(lang, index, buf, work, world)
                    buf, index = [], index + 1
        for path in paths:
            try:
                for doc in iter_documents(path, text_field=cfg.text_field, fmt=cfg.corpus_format):
                    buf.append((f"{lang}/{doc_index}", doc.text))
                    doc_index += 1
                    if len(buf) == cfg.docs_per_chunk:
                        yield from _maybe_job(lang, index, buf, work, world)
                        buf, index = [], index + 1
            except CorpusError as exc:  # a bad line past the first document (prepare checked up to there)
                raise BuildError(f"corpora.{lang}: {exc}") from exc
        if buf:
            yield from _maybe_job(lang, index, buf, work, world)


def _maybe_job(lang, index, docs, work, world):
    folder = work / "chunks" / doc_chunks.chunk_name(lang, index)
    # chunks go round-robin over ranks; finished ones (a resumed build) are skipped
    if index % world.size == world.rank and not doc_chunks.chunk_done(folder):
        yield lang, index, list(docs), str(folder)


def _stage_a(cfg: BuildConfig, work: Path, world: World, workers: int, progress: bool) -> None:
    """Tokenise this rank's chunks. The job generator reads the corpora in this process; a bad line raises
    BuildError here (with a pool, multiprocessing hands the generator's exception back through `results`).
    Chunks finished before it stay: they come from the lines before the bad one."""
    _CTX.clear()
    _CTX.update(prepare(cfg).contexts)
    jobs = _chunk_jobs(cfg, work, world)
    bar = tqdm(desc=f"[rank {world.rank}] tokenise+switch", unit="doc", disable=not progress, smoothing=0.1)
    t0, tokens = time.perf_counter(), 0
    pool = None
    if workers <= 1:
        _init_worker()
        results = map(_run_chunk, jobs)
    else:
        import multiprocessing as mp

        pool = mp.get_context("fork").Pool(workers, initializer=_init_worker)
        results = pool.imap(_run_chunk, jobs)
    try:
        for _lang, n_docs, n_tok in results:
            tokens += n_tok
            bar.update(n_docs)
            bar.set_postfix_str(f"{tokens / max(time.perf_counter() - t0, 1e-9) / 1e3:.0f}k tok/s")
    except BaseException:
        if pool is not None:
            pool.terminate()  # workers may be mid-chunk: their temporary folders are never renamed
        raise
    finally:
        bar.close()
    if pool is not None:
        pool.close()
        pool.join()


# -------------------------------------------------------------------------------------------------- plan
def _collect_langs(cfg: BuildConfig, work: Path) -> dict[str, packing.LangDocs]:
    out = {}
    for lang in cfg.corpora:
        names, starts, lens, ids = [], [], [], []
        index = 0
        while doc_chunks.chunk_done(folder := work / "chunks" / doc_chunks.chunk_name(lang, index)):
            dl, meta = doc_chunks.load_chunk_meta(folder)
            names += [folder.name] * dl.size
            starts.append(np.concatenate(([0], np.cumsum(dl)[:-1])))
            lens.append(dl)
            ids += meta["doc_ids"]
            index += 1
        if not names:
            raise BuildError(f"corpus {lang!r}: no documents")
        out[lang] = packing.LangDocs(lang, names, np.concatenate(starts), np.concatenate(lens), ids)
    return out


def _plan(cfg: BuildConfig, work: Path) -> dict:
    langs = _collect_langs(cfg, work)
    weights = cfg.normalized_mixture()
    if weights is None:  # no mixture given: every document, i.e. the corpora's natural proportions
        total = sum(ld.tokens for ld in langs.values())
        weights = {lang: ld.tokens / total for lang, ld in sorted(langs.items())}
    report = packing.mixture_quotas(langs, weights, cfg.total_tokens)
    plan, layout = packing.make_plan(langs, report, cfg.seed, cfg.seq_len, cfg.samples_per_shard,
                                     cfg.shard_multiple)
    tmp = work / "plan.tmp.npz"
    with open(tmp, "wb") as f:
        np.savez(f, **plan.to_arrays())
    tmp.replace(work / "plan.npz")
    info = {"chunk_names": plan.chunk_names, "doc_ids": plan.doc_ids, "languages": plan.languages,
            "seq_len": plan.seq_len, "n_shards": plan.n_shards, "samples_per_shard": plan.samples_per_shard,
            "mixture": report, "layout": layout}
    _write_json(work / "plan.json", info)
    return info


def load_plan(work: Path) -> packing.Plan:
    info = json.loads((work / "plan.json").read_text())
    arrays = np.load(work / "plan.npz")
    return packing.Plan(chunk_names=info["chunk_names"], doc_ids=info["doc_ids"], languages=info["languages"],
                        seq_len=info["seq_len"], n_shards=info["n_shards"],
                        samples_per_shard=info["samples_per_shard"], **{k: arrays[k] for k in arrays.files})


# ------------------------------------------------------------------------------------------------ stage B
_PLAN_CACHE: dict[str, tuple[packing.Plan, doc_chunks.ChunkArrays]] = {}


def write_shard(out_dir: Path, shard: int) -> dict:
    """Write shard `shard` (temporary name, then rename) and its record; returns the record."""
    import webdataset as wds

    work = out_dir / ".work"
    if str(work) not in _PLAN_CACHE:
        _PLAN_CACHE.clear()
        _PLAN_CACHE[str(work)] = (load_plan(work), doc_chunks.ChunkArrays(work / "chunks"))
    plan, chunks = _PLAN_CACHE[str(work)]
    samples = packing.shard_samples(plan, shard, chunks)
    name = shard_name(shard)
    tmp = out_dir / f".{name}.tmp{os.getpid()}"
    with open(tmp, "wb") as f, wds.TarWriter(f, mtime=0) as sink:
        for j, s in enumerate(samples):
            sink.write(encode_sample(sample_key(shard, j), s))
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    lang_tokens: dict[str, int] = {}
    for s in samples:
        for lang, n in zip(s.langs, np.bincount(s.segments)):
            lang_tokens[lang] = lang_tokens.get(lang, 0) + int(n)
    record = {
        "name": name,
        "samples": len(samples),
        "tokens": sum(s.seq_len for s in samples),
        "loss_tokens": sum(packing.loss_tokens(s) for s in samples),
        "switched_words": sum(s.switched_words for s in samples),
        "lang_tokens": dict(sorted(lang_tokens.items())),
        "sha256": digest,
    }
    tmp.replace(out_dir / name)
    _write_json(work / "shards" / f"{shard:06d}.json", record)
    return record


def _stage_b(out_dir: Path, n_shards: int, world: World, workers: int, progress: bool) -> None:
    todo = [s for s in range(n_shards)
            if s % world.size == world.rank and not (out_dir / ".work" / "shards" / f"{s:06d}.json").is_file()]
    bar = tqdm(total=len(todo), desc=f"[rank {world.rank}] write shards", unit="shard", disable=not progress)
    jobs = [(s, str(out_dir)) for s in todo]
    if workers <= 1 or len(todo) <= 1:
        for job in jobs:
            _run_shard(job)
            bar.update(1)
    else:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(min(workers, len(todo))) as pool:
            for _ in pool.imap_unordered(_run_shard, jobs):
                bar.update(1)
    bar.close()


# ------------------------------------------------------------------------------------------------- driver
@dataclass
class BuildSummary:
    out_dir: str
    n_shards: int
    samples: int
    tokens: int
    loss_tokens: int
    switched_words: int
    seconds: float
    mixture: dict = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [(f"{self.n_shards} shards, {self.samples:,} samples, {self.tokens:,} tokens "
                f"({self.loss_tokens:,} loss tokens), {self.switched_words:,} switched words, "
                f"{self.seconds:.1f}s -> {self.out_dir}")]
        for lang, m in self.mixture.items():
            out.append(f"  {lang}: {m['docs']:,}/{m['available_docs']:,} docs, {m['tokens']:,} tokens "
                       f"(weight {m['weight']:.3f})")
        return out


def build_shards(cfg: BuildConfig, out_dir: str | Path, *, workers: int = 1, world: World | None = None,
                 overwrite: bool = False, progress: bool = True) -> BuildSummary:
    """Build (or resume building) the shard folder `out_dir` from `cfg`. See the module docstring."""
    t0 = time.perf_counter()
    if world is None:
        try:
            world = mpi_world()
        except LauncherError as exc:
            raise BuildError(str(exc)) from exc
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise BuildError(f"{out_dir}: is a file, not a folder (--out names the shard folder to create or resume)")
    work = out_dir / ".work"
    # Before any work starts: the settings, every input file up to its first document, tokenizer vs table
    # (prepare), and upper bounds on the tokens the corpora can give (check_quotas, rank 0). Later: a bad line
    # further into a corpus (stage A) and the exact mixture and shard counts (the plan) raise BuildError too.
    prepared = prepare(cfg)
    _on_rank_0(world, lambda: check_quotas(cfg, prepared))
    _on_rank_0(world, lambda: _claim_folder(out_dir, cfg, overwrite))
    try:
        _stage_a(cfg, work, world, workers, progress and world.rank == 0)
        world.barrier()
        info = None
        if world.rank == 0:
            try:
                info = _plan(cfg, work)
            except packing.MixtureError as exc:
                info = {"error": str(exc)}
        info = world.bcast(info)
        if "error" in info:
            raise BuildError(info["error"])
    except BuildError as exc:
        if world.rank == 0:  # the folder may be taken over by a corrected config (see _claim_folder)
            (work / STOPPED).write_text(f"{exc}\n")
        raise
    _stage_b(out_dir, info["n_shards"], world, workers, progress and world.rank == 0)
    world.barrier()
    manifest = None
    if world.rank == 0:
        manifest = _write_manifest(cfg, out_dir, info)
    manifest = world.bcast(manifest)
    t = manifest.totals
    return BuildSummary(str(out_dir), len(manifest.shards), t["samples"], t["tokens"], t["loss_tokens"],
                        t["switched_words"], time.perf_counter() - t0, manifest.mixture)


def _on_rank_0(world: World, fn) -> None:
    """Run fn on rank 0; a BuildError there is raised on every rank (no rank left waiting in a barrier)."""
    error = None
    if world.rank == 0:
        try:
            fn()
        except BuildError as exc:
            error = str(exc)
    error = world.bcast(error)
    if error is not None:
        raise BuildError(error)


def _claim_folder(out_dir: Path, cfg: BuildConfig, overwrite: bool) -> None:
    """Start a build in `out_dir`, resume the same one, or replace another (rules: the module docstring)."""
    work = out_dir / ".work"
    stamp = work / "config.sha256"
    fingerprint = cfg.fingerprint()
    is_build = stamp.is_file()
    if is_build and not overwrite and stamp.read_text().strip() == fingerprint:
        (work / STOPPED).unlink(missing_ok=True)  # resume
        return
    if not overwrite and out_dir.exists() and any(out_dir.iterdir()):
        if not is_build:
            raise BuildError(f"{out_dir}: not empty and not a shard build; choose another folder or --overwrite")
        if not (work / STOPPED).is_file():
            raise BuildError(f"{out_dir}: holds a build with a different config or inputs (finished, killed or "
                             "still running); choose another folder or pass --overwrite (its tokenised chunks "
                             "whose inputs and settings are unchanged are kept)")
    keys = cfg.chunk_keys()
    keep: set[str] = set()
    if is_build and (work / "chunk_keys.json").is_file():
        old = json.loads((work / "chunk_keys.json").read_text())
        keep = {lang for lang, key in keys.items() if old.get(lang) == key}
    if out_dir.exists():
        stamp.unlink(missing_ok=True)  # first: a replacement cut short is not taken for this build
        _clear_folder(out_dir, keep)
    (work / "chunks").mkdir(parents=True, exist_ok=True)
    (work / "shards").mkdir(parents=True, exist_ok=True)
    _write_json(work / "chunk_keys.json", keys)
    stamp.write_text(fingerprint + "\n")


def _clear_folder(out_dir: Path, keep_langs: set[str]) -> None:
    """Delete what `out_dir` holds except the finished chunks (.work/chunks/{lang}-NNNNNN) of `keep_langs`."""
    for p in out_dir.iterdir():
        if p.name == ".work" and p.is_dir():
            for q in p.iterdir():
                if q.name == "chunks" and q.is_dir():
                    for c in q.iterdir():
                        m = re.fullmatch(r"(.+)-\d{6,}", c.name)  # temporary folders end in .tmpPID
                        if not (m and m.group(1) in keep_langs and doc_chunks.chunk_done(c)):
                            shutil.rmtree(c) if c.is_dir() else c.unlink()
                else:
                    shutil.rmtree(q) if q.is_dir() else q.unlink()
        else:
            shutil.rmtree(p) if p.is_dir() else p.unlink()


def _write_manifest(cfg: BuildConfig, out_dir: Path, info: dict) -> Manifest:
    work = out_dir / ".work"
    shards = [json.loads((work / "shards" / f"{s:06d}.json").read_text()) for s in range(info["n_shards"])]
    prepared = prepare(cfg)
    keys = ("samples", "tokens", "loss_tokens", "switched_words")
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        build=cfg.to_manifest(),
        seed=cfg.seed,
        seq_len=cfg.seq_len,
        vocab_size=prepared.vocab_size,
        vocab_offset=prepared.clone_offset,
        eos_id=prepared.eos_id,
        pad_id=prepared.pad_id,
        languages=info["languages"],
        tokenizer_sha256=prepared.tokenizer_sha256,
        dictionary_sha256=prepared.dictionary_sha256,
        mixture=info["mixture"],
        layout=info["layout"],
        totals={k: sum(s[k] for s in shards) for k in keys},
        shards=shards,
    )
    manifest.write(out_dir)
    return manifest


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    tmp.replace(path)


def summary_dict(s: BuildSummary) -> dict:
    return asdict(s)
