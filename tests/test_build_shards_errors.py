"""The shard builder's bad-input paths through the CLI: exit 2 and one line, and a folder that a corrected
rerun takes over (keeping the work that is still valid)."""

import gzip
import os
import subprocess
import sys
from pathlib import Path

import pytest
from kjv_sample import kjv_lines, train_tokenizer_on
from reliability_cases import exit_line, raised, record_case

from prealign_scale.data.build_config import BuildConfig, BuildError
from prealign_scale.data.build_shards import build_shards

ROOT = Path(__file__).resolve().parents[1]
BAD_LINE = 41


@pytest.fixture(scope="module")
def kjv(tmp_path_factory):
    """A tokenizer and three corpora: en (60 chapters, JSONL), de (20 chapters, JSONL), en.jsonl.gz (gzip)."""
    d = tmp_path_factory.mktemp("errors")
    lines = kjv_lines(100)
    train_tokenizer_on(lines, d / "tok", 400)
    (d / "en.jsonl").write_text("".join(lines[:60]))
    (d / "de.jsonl").write_text("".join(lines[60:80]))
    with gzip.open(d / "en.jsonl.gz", "wt") as f:
        f.write("".join(lines[:60]))
    return d


def cli(kjv: Path, out: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """data_tools/build_shards.py with de first (its chunks are done before en's are read) and no table."""
    cmd = [sys.executable, str(ROOT / "data_tools/build_shards.py"), "--out", str(out), "--no-progress",
           "--tokenizer", str(kjv / "tok"), "--corpus", f"de={kjv / 'de.jsonl'}", "--seq-len", "64",
           "--samples-per-shard", "50", "--shard-multiple", "2", "--docs-per-chunk", "8", "--p", "0", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, check=False, env=env, timeout=300)


def config(kjv: Path, en: Path, **kw) -> BuildConfig:
    """The BuildConfig that `cli(kjv, out, "--corpus", f"en={en}", ...)` makes (same manifest bytes)."""
    base = {"corpora": {"de": [str(kjv / "de.jsonl")], "en": [str(en)]}, "tokenizer": str(kjv / "tok"),
            "seq_len": 64, "samples_per_shard": 50, "shard_multiple": 2, "docs_per_chunk": 8, "p": 0.0}
    return BuildConfig(**{**base, **kw})


def shard_files(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def chunk_mtimes(folder: Path, prefix: str) -> dict:
    return {c.name: (c / "ids.npy").stat().st_mtime_ns for c in sorted((folder / ".work/chunks").glob(f"{prefix}-*"))}


@pytest.mark.parametrize("workers", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_bad_corpus_line_exits_2_and_a_corrected_rerun_finishes(kjv, tmp_path, workers):
    """Invalid JSON on line 41 (past the first document, so only stage A reads it): exit 2, one line naming
    file:41, no traceback. Fixing the file (line 41, and line 3, which the failed run had already tokenised)
    and running the same command again finishes, equal to a fresh build: de's chunks are kept, en's redone."""
    en = tmp_path / "en.jsonl"
    good = (kjv / "en.jsonl").read_text().splitlines(keepends=True)
    bad = list(good)
    bad[BAD_LINE - 1] = '{"text": "broken\n'
    bad[2] = good[2].replace("LORD", "Lord", 1)  # the user restores this line too (same size, new tokens)
    assert bad[2] != good[2] and len(bad[2]) == len(good[2])
    en.write_text("".join(bad))
    out = tmp_path / "out"
    args = ("--corpus", f"en={en}", "--workers", str(workers))

    r = cli(kjv, out, *args)
    assert r.returncode == 2, r.stderr
    assert r.stderr == f"error: corpora.en: {en}:{BAD_LINE}: invalid JSON: Unterminated string starting at (column 10)\n"
    assert (out / ".work/stopped.txt").read_text() == r.stderr[len("error: "):]
    de_chunks = chunk_mtimes(out, "de")
    assert sorted(de_chunks) == [f"de-{i:06d}" for i in range(3)]  # 20 documents / 8
    assert sorted(chunk_mtimes(out, "en")) == [f"en-{i:06d}" for i in range(5)]  # lines 1-40, before the bad one

    again = cli(kjv, out, *args)  # not fixed yet: the same answer (a resume)
    assert (again.returncode, again.stderr) == (2, r.stderr)

    old_mtime = en.stat().st_mtime_ns
    en.write_text("".join(good))
    os.utime(en, ns=(old_mtime + 10**9, old_mtime + 10**9))  # an edit moves the mtime (coarse clocks: by hand)
    assert en.stat().st_size == len("".join(good).encode()) != len("".join(bad).encode())
    fixed = cli(kjv, out, *args)
    assert fixed.returncode == 0, fixed.stderr
    assert not (out / ".work/stopped.txt").exists()
    assert chunk_mtimes(out, "de") == de_chunks  # unchanged inputs: kept
    build_shards(config(kjv, en), tmp_path / "fresh", workers=workers, progress=False)
    same = shard_files(out) == shard_files(tmp_path / "fresh")
    assert same  # en re-tokenised from the corrected file
    record_case("data tools", f"build_shards.py: invalid JSON on corpus line {BAD_LINE} ({workers} worker(s)), "
                "then the file fixed and the same command run again",
                "exit 2, one line naming file:line; the fixed rerun keeps the valid work and equals a fresh build",
                f"{exit_line(r.returncode, r.stderr)}; rerun: exit {fixed.returncode}, unchanged chunks kept: "
                f"{chunk_mtimes(out, 'de') == de_chunks}, shards equal to a fresh build: {same}")


def test_same_size_edit_is_a_changed_input(kjv, tmp_path):
    """The fingerprint holds each input's mtime, not only its size: an equal-size edit is a new build."""
    en = tmp_path / "en.jsonl"
    en.write_text((kjv / "en.jsonl").read_text())
    cfg = BuildConfig(corpora={"en": [str(en)]}, tokenizer=str(kjv / "tok"), p=0.0, seq_len=64)
    before, keys = cfg.fingerprint(), cfg.chunk_keys()
    st = en.stat()
    os.utime(en, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert en.stat().st_size == st.st_size
    assert cfg.fingerprint() != before and cfg.chunk_keys()["en"] != keys["en"]
    # the mixture and layout are not part of the chunks' identity
    other = BuildConfig(corpora={"en": [str(en)]}, tokenizer=str(kjv / "tok"), p=0.0, seq_len=128,
                        samples_per_shard=7, shard_multiple=3, total_tokens=1000, mixture={"en": 1.0})
    assert other.chunk_keys() == cfg.chunk_keys() and other.fingerprint() != cfg.fingerprint()


@pytest.mark.parametrize("name", ["en.jsonl.gz", "en.jsonl.zst"])
def test_compressed_mixture_that_cannot_be_met_fails_before_work(kjv, tmp_path, name):
    """A .gz/.zst corpus is bounded by its decompressed bytes before any tokenising (nothing is created)."""
    text = (kjv / "en.jsonl").read_bytes()
    corpus = tmp_path / name
    if name.endswith(".gz"):
        corpus.write_bytes(gzip.compress(text[:50_000]) + gzip.compress(text[50_000:]))  # two gzip members
    else:
        import zstandard

        corpus.write_bytes(zstandard.ZstdCompressor().compress(text))
    # de: 1 part in 1000, en: 999 -> en needs 0.999 * total_tokens
    total = 2 * len(text)
    r = cli(kjv, tmp_path / "out", "--corpus", f"en={corpus}", "--mixture", "de=0.001,en=0.999",
            "--total-tokens", str(total))
    assert r.returncode == 2
    need = int(0.999 * total)
    assert r.stderr == (f"error: mixture cannot be met: en needs {need:,} tokens of total_tokens={total:,} but its "
                        f"files hold only {len(text):,} bytes of text (at most {len(text) + 1:,} tokens); lower "
                        "total_tokens or en's weight, or add data\n")
    assert not (tmp_path / "out").exists()
    record_case("data tools", f"build_shards.py: a mixture the {name.rsplit('.', 1)[1]} corpus cannot meet",
                "exit 2, one line, before any tokenising (nothing created)",
                f"{exit_line(r.returncode, r.stderr)}; output created: {(tmp_path / 'out').exists()}")


def test_too_few_samples_for_shard_multiple_fails_before_work(kjv, tmp_path):
    tiny = tmp_path / "tiny.jsonl.gz"
    tiny.write_bytes(gzip.compress(b'{"text": "In the beginning"}\n'))  # 29 bytes: at most 29 + 1 tokens
    with pytest.raises(BuildError, match=r"shard_multiple: the corpora make at most 30 tokens, fewer than the "
                                         r"129 that shard_multiple=2 samples of seq_len=64 need") as err:
        build_shards(BuildConfig(corpora={"en": [str(tiny)]}, tokenizer=str(kjv / "tok"), p=0.0, seq_len=64,
                                 shard_multiple=2), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    record_case("data tools", "build_shards: corpora too small for one shard_multiple of samples",
                "refused before any work, naming shard_multiple",
                f"{raised(err.value)}; output created: {(tmp_path / 'out').exists()}")


def test_new_mixture_or_layout_reuses_the_tokenised_chunks(kjv, tmp_path):
    """A quota within the byte bound but above the real tokens fails at the plan (after stage A); rerunning
    with a lower one re-plans from the same chunks. A finished build is replaced only with --overwrite, which
    keeps the chunks too. Every result equals a fresh build of its config."""
    out = tmp_path / "out"
    r = cli(kjv, out, "--corpus", f"en={kjv / 'en.jsonl.gz'}", "--mixture", "de=0.2,en=0.8", "--total-tokens",
            "200000")
    assert r.returncode == 2 and r.stderr.startswith("error: mixture cannot be met for total_tokens=200,000: ")
    assert r.stderr.count("\n") == 1 and (out / ".work/stopped.txt").is_file()
    chunks = {**chunk_mtimes(out, "de"), **chunk_mtimes(out, "en")}
    assert len(chunks) == 3 + 8  # 20 and 60 documents, 8 per chunk

    def run(folder: Path, **kw) -> None:
        build_shards(config(kjv, kjv / "en.jsonl.gz", mixture={"de": 0.2, "en": 0.8}, **kw), folder, progress=False)

    run(out, total_tokens=40_000)
    assert {**chunk_mtimes(out, "de"), **chunk_mtimes(out, "en")} == chunks  # not re-tokenised
    run(tmp_path / "fresh1", total_tokens=40_000)
    assert shard_files(out) == shard_files(tmp_path / "fresh1")

    record_case("data tools", "build_shards.py: a quota above the real token count (found after tokenising), "
                "then rerun with a lower one", "exit 2, one line; the rerun re-plans from the same chunks",
                f"{exit_line(r.returncode, r.stderr)}; rerun equal to a fresh build, chunks not re-tokenised: "
                f"{shard_files(out) == shard_files(tmp_path / 'fresh1')}")
    with pytest.raises(BuildError, match="holds a build with a different config") as err:
        run(out, seq_len=32)  # a finished build
    record_case("data tools", "build_shards: a finished shard folder given another config without --overwrite",
                "refused; the finished build is untouched", raised(err.value))
    build_shards(config(kjv, kjv / "en.jsonl.gz", mixture={"de": 0.2, "en": 0.8}, seq_len=32), out,
                 progress=False, overwrite=True)
    assert {**chunk_mtimes(out, "de"), **chunk_mtimes(out, "en")} == chunks
    run(tmp_path / "fresh2", seq_len=32)
    assert shard_files(out) == shard_files(tmp_path / "fresh2")


def test_plain_srun_is_refused_before_work(kjv, tmp_path):
    env = dict(os.environ, SLURM_JOB_ID="5", SLURM_STEP_ID="0", SLURM_STEP_NUM_TASKS="4", SLURM_NTASKS="4",
               SLURM_PROCID="1")
    for marker in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MV2_COMM_WORLD_SIZE"):
        env.pop(marker, None)
    r = cli(kjv, tmp_path / "out", env=env)
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert r.stderr.startswith("error: started as one of 4 srun tasks without MPI") and "srun --mpi=pmix" in r.stderr
    assert not (tmp_path / "out").exists()
    record_case("data tools", "build_shards.py started as 4 plain srun tasks (no MPI)",
                "exit 2, one line naming srun --mpi=pmix, before any work",
                f"{exit_line(r.returncode, r.stderr)}; output created: {(tmp_path / 'out').exists()}")
