"""The shard builder end to end: determinism across workers and ranks, resume, verify, webdataset, bad input."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from kjv_sample import kjv_lines, train_tokenizer_on

from prealign_scale.alignment.clone import build_english_clone
from prealign_scale.data.build_config import BuildConfig, BuildError
from prealign_scale.data.build_shards import build_shards
from prealign_scale.data.shard_format import IGNORE_INDEX, decode_sample
from prealign_scale.data.verify import iter_tar_samples, verify_shards
from prealign_scale.text.tokenizer import train_bpe

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("build")
    lines = kjv_lines(240)
    (d / "corpus.jsonl").write_text("".join(lines))
    train_tokenizer_on(lines, d / "tok", 600)
    build_english_clone(d / "corpus.jsonl", d / "tok", d / "clone", clone_fraction=0.1, top_n=300, seed=0)
    return d


def clone_cfg(data, **kw):
    base = {"corpora": {"en": [str(data / "clone/en.jsonl.gz")], "clone": [str(data / "clone/clone.jsonl.gz")]},
                "tokenizer": str(data / "tok"), "table": str(data / "clone/table"), "clone_langs": ["clone"],
                "mixture": {"en": 0.9, "clone": 0.1}, "p": 0.05, "seq_len": 128, "samples_per_shard": 60, "shard_multiple": 4,
                "docs_per_chunk": 16}
    base.update(kw)
    return BuildConfig(**base)


def folder_bytes(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def read_samples(folder: Path):
    for shard in sorted(folder.glob("shard-*.tar")):
        for raw in iter_tar_samples(shard):
            yield decode_sample(raw)


@pytest.fixture(scope="module")
def built(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "shards"
    build_shards(clone_cfg(data), out, workers=1, progress=False)
    return out


def test_manifest_and_verify(built):
    m = json.loads((built / "manifest.json").read_text())
    assert len(m["shards"]) % 4 == 0 and len({s["samples"] for s in m["shards"]}) == 1
    assert m["languages"] == ["clone", "en"] and m["vocab_size"] == 1200 and m["vocab_offset"] == 600
    assert m["mixture"]["en"]["weight"] == pytest.approx(0.9)
    assert m["totals"]["switched_words"] > 0
    assert verify_shards(built).ok


def test_english_clone_targets(built):
    """In English documents no target is ever a Clone id; Clone documents are all Clone ids (or EOS)."""
    seen_switch = False
    for s in read_samples(built):
        for k, lang in enumerate(s.langs):
            seg = s.segments == k
            t = s.targets[seg]
            t = t[t != IGNORE_INDEX]
            ids = s.input_ids[seg]
            if lang == "en":
                assert (t < 600).all()
                seen_switch |= bool((ids >= 600).any())  # switched words: Clone ids in the INPUT only
            else:
                assert ((ids >= 600) | (ids == 1)).all()
    assert seen_switch


@pytest.mark.slow
def test_same_bytes_with_two_workers(data, built, tmp_path):
    build_shards(clone_cfg(data), tmp_path / "two", workers=2, progress=False)
    assert folder_bytes(tmp_path / "two") == folder_bytes(built)


@pytest.mark.slow
def test_resume_after_sigkill(data, built, tmp_path):
    """Kill the CLI mid-build; re-running the same command finishes with the uninterrupted bytes."""
    out = tmp_path / "killed"
    cmd = [sys.executable, str(ROOT / "data_tools/build_shards.py"), "--out", str(out), "--no-progress",
           "--tokenizer", str(data / "tok"), "--table", str(data / "clone/table"),
           "--corpus", f"en={data / 'clone/en.jsonl.gz'}", "--corpus", f"clone={data / 'clone/clone.jsonl.gz'}",
           "--clone-langs", "clone", "--mixture", "en=0.9,clone=0.1", "--seq-len", "128",
           "--samples-per-shard", "60", "--shard-multiple", "4", "--docs-per-chunk", "16"]
    proc = subprocess.Popen(cmd)
    chunks = out / ".work" / "chunks"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if chunks.is_dir() and len([c for c in chunks.iterdir() if (c / "docs.json").exists()]) >= 3:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists(), "the build finished before it could be killed"
    done_before = {c.name: (c / "ids.npy").stat().st_mtime_ns for c in chunks.iterdir() if (c / "docs.json").exists()}
    assert subprocess.run(cmd, capture_output=True, check=False).returncode == 0
    assert folder_bytes(out) == folder_bytes(built)
    for name, mtime in done_before.items():  # finished chunks were not redone
        assert (chunks / name / "ids.npy").stat().st_mtime_ns == mtime


def test_resume_skips_finished_shards_and_refuses_other_config(data, built, tmp_path):
    out = tmp_path / "partial"
    shutil.copytree(built, out)
    (out / "manifest.json").unlink()
    (out / "shard-000001.tar").unlink()
    (out / ".work/shards/000001.json").unlink()
    kept = (out / "shard-000002.tar").stat().st_mtime_ns
    build_shards(clone_cfg(data), out, workers=1, progress=False)
    assert folder_bytes(out) == folder_bytes(built)
    assert (out / "shard-000002.tar").stat().st_mtime_ns == kept
    with pytest.raises(BuildError, match="different config"):
        build_shards(clone_cfg(data, seed=1), out, workers=1, progress=False)


def test_verify_names_bad_shards(built, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(built, bad)
    raw = bytearray((bad / "shard-000002.tar").read_bytes())
    raw[2000] ^= 0xFF
    (bad / "shard-000002.tar").write_bytes(bytes(raw))
    (bad / "shard-000003.tar").write_bytes((bad / "shard-000003.tar").read_bytes()[:5000])  # truncated
    report = verify_shards(bad)
    assert sorted(report.problems) == ["shard-000002.tar", "shard-000003.tar"]
    assert "sha256" in report.problems["shard-000002.tar"][0]
    assert any("unreadable" in m or "samples" in m for m in report.problems["shard-000003.tar"])
    out = subprocess.run([sys.executable, str(ROOT / "data_tools/verify_shards.py"), str(bad)],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 1 and "shard-000003.tar" in out.stdout


def test_webdataset_split_2_ranks_x_2_workers(built):
    """Read with webdataset's own node/worker splitting: every sample exactly once."""
    import webdataset as wds

    urls = [str(p) for p in sorted(built.glob("shard-*.tar"))]
    keys = []
    for rank in range(2):
        for worker in range(2):
            env = {"RANK": str(rank), "WORLD_SIZE": "2", "WORKER": str(worker), "NUM_WORKERS": "2"}
            old = {k: os.environ.get(k) for k in env}
            os.environ.update(env)
            try:
                ds = wds.WebDataset(urls, nodesplitter=wds.split_by_node, workersplitter=wds.split_by_worker,
                                    shardshuffle=False, empty_check=False)
                keys += [d["__key__"] for d in ds]
            finally:
                for k, v in old.items():
                    os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    m = json.loads((built / "manifest.json").read_text())
    assert len(keys) == len(set(keys)) == sum(s["samples"] for s in m["shards"])


@pytest.mark.slow
def test_mpirun_two_ranks_identical(data, built, tmp_path):
    if shutil.which("mpirun") is None:
        pytest.skip("mpirun not installed (make test installs openmpi-bin)")
    out = tmp_path / "mpi"
    cmd = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", "2", "--mca", "btl", "self,vader",
           "--mca", "oob_tcp_if_include", "lo", sys.executable, str(ROOT / "data_tools/build_shards.py"),
           "--out", str(out), "--no-progress", "--tokenizer", str(data / "tok"), "--table",
           str(data / "clone/table"), "--corpus", f"en={data / 'clone/en.jsonl.gz'}", "--corpus",
           f"clone={data / 'clone/clone.jsonl.gz'}", "--clone-langs", "clone", "--mixture", "en=0.9,clone=0.1",
           "--seq-len", "128", "--samples-per-shard", "60", "--shard-multiple", "4", "--docs-per-chunk", "16"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    assert folder_bytes(out) == folder_bytes(built)
    # both ranks did work: chunks 0,2,.. by rank 0 and 1,3,.. by rank 1 (round-robin), all present
    assert len(list((out / ".work/chunks").iterdir())) >= 2


# ------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("change, message", [
    ({"corpora": {"en": ["/nonexistent/x.jsonl"]}, "mixture": None, "clone_langs": []}, "corpora.en: .*nonexistent"),
    ({"mixture": {"en": 0.9, "de": 0.1}}, "mixture: languages"),
    ({"mixture": {"en": 0.9, "clone": -1}}, "weights must be positive"),
    ({"p": 1.5}, "p: must be a probability"),
    ({"seq_len": 1}, "seq_len: must be"),
    ({"clone_langs": ["fr"]}, "have no corpus"),
    ({"switch_langs": ["clone"]}, "cannot be code-switched"),
])
def test_bad_config_errors_before_work(data, tmp_path, change, message):
    with pytest.raises(BuildError, match=message):
        build_shards(clone_cfg(data, **change), tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()  # nothing started


def test_empty_corpus_and_tokenizer_mismatch(data, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(BuildError, match="empty"):
        build_shards(clone_cfg(data, corpora={"en": [str(empty)]}, mixture=None, clone_langs=[]),
                     tmp_path / "a", progress=False)
    other = tmp_path / "tok2"
    train_bpe(["a completely different tokenizer text"] * 50, other, vocab_size=300)
    with pytest.raises(BuildError, match="another tokenizer"):
        build_shards(clone_cfg(data, tokenizer=str(other)), tmp_path / "b", progress=False)


def test_mixture_that_cannot_be_met(data, tmp_path):
    # .gz corpora: bounded by their decompressed bytes, before any tokenisation (nothing created)
    with pytest.raises(BuildError, match="mixture cannot be met: en needs 900,000,000 tokens .* hold only"):
        build_shards(clone_cfg(data, total_tokens=10**9), tmp_path / "c", progress=False)
    assert not (tmp_path / "c").exists()
    # uncompressed corpus: bounded by its size
    plain = tmp_path / "en.txt"
    plain.write_text("in the beginning\n" * 10)
    with pytest.raises(BuildError, match="hold only"):
        build_shards(clone_cfg(data, corpora={"en": [str(plain)], "clone": [str(data / "clone/clone.jsonl.gz")]},
                               total_tokens=10_000), tmp_path / "d", progress=False)


def test_cli_reports_errors_with_exit_2(data, tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "data_tools/build_shards.py"), "--out", str(tmp_path / "o"),
                        "--tokenizer", str(data / "tok"), "--corpus", "en=/missing.jsonl"],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 2 and "/missing.jsonl" in r.stderr


def test_dictionary_mode_switches_words(data, tmp_path):
    """A plain (non-Clone) dictionary table: words of the source language switch, targets stay original."""
    from prealign_scale.alignment.table import AlignmentTable, Entry
    from prealign_scale.text.tokenizer import load_tokenizer, mid_sentence_ids, tokenizer_sha256

    tok = load_tokenizer(data / "tok")
    pairs = [("the", "der"), ("and", "und"), ("of", "von")]
    entries = [Entry(i, (a, b), ("en", "de"), (tuple(mid_sentence_ids(tok, a)), tuple(mid_sentence_ids(tok, b))))
               for i, (a, b) in enumerate(pairs)]
    AlignmentTable(entries, {"kind": "dictionary", "source_lang": "en",
                             "tokenizer_sha256": tokenizer_sha256(data / "tok")}).save(tmp_path / "table")
    cfg = BuildConfig(corpora={"en": [str(data / "clone/en.jsonl.gz")]}, tokenizer=str(data / "tok"),
                      table=str(tmp_path / "table"), p=0.5, seq_len=128, samples_per_shard=50)
    s = build_shards(cfg, tmp_path / "out", progress=False)
    assert s.switched_words > 1000 and verify_shards(tmp_path / "out").ok
    der = mid_sentence_ids(tok, "der")[0]
    the = mid_sentence_ids(tok, "the")[0]
    sample = next(read_samples(tmp_path / "out"))
    pos = np.flatnonzero(sample.input_ids[1:] == der)  # positions whose NEXT input is a switched " der"
    assert pos.size and (sample.targets[pos] == the).all()


def test_knowledge_facts_mixed_into_source_documents_only(data, tmp_path):
    """--facts: every fact stated fact_repeats times, in English documents only, always inside the quota."""
    facts = tmp_path / "facts.jsonl"
    facts.write_text('{"subject": "Zabulek", "relation": "lives_in", "object": "Hebron"}\n'
                     '{"subject": "Morantel", "relation": "lives_in", "object": "Jericho"}\n')
    templates = tmp_path / "templates.json"
    templates.write_text('{"en": {"lives_in": ["{subject} dwelt in {object}.", "{subject} lives in {object}."]}}')
    cfg = clone_cfg(data, facts=str(facts), fact_templates=str(templates), fact_repeats=3)
    build_shards(cfg, tmp_path / "out", progress=False)
    m = json.loads((tmp_path / "out/manifest.json").read_text())
    fact_docs = {d for s in read_samples(tmp_path / "out") for d, lang in zip(s.doc_ids, s.langs)
                 if "/fact/" in d and lang == "en"}
    assert fact_docs == {f"en/fact/{i}" for i in range(6)}  # 2 facts x 3 repeats, one per document
    assert m["build"]["fact_repeats"] == 3 and verify_shards(tmp_path / "out").ok
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"subject": "X", "relation": "lives_in"}\n')
    with pytest.raises(BuildError, match="bad.jsonl:1"):
        build_shards(clone_cfg(data, facts=str(bad), fact_templates=str(templates)), tmp_path / "o2", progress=False)
