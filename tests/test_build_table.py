"""Alignment-table building (dedup, tokens, split), coverage reports and the build_table CLI."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from itertools import islice
from pathlib import Path

import pytest

from prealign_scale.alignment.build_table import (
    SPLIT_RULE,
    build_alignment_table,
    clean_entries,
    entry_key,
    leak_free_splits,
)
from prealign_scale.alignment.coverage import coverage_report, normalize_word
from prealign_scale.alignment.dictionaries import RawEntry
from prealign_scale.alignment.table import ALIGN, HELDOUT, AlignmentTable
from prealign_scale.text.tokenizer import mid_sentence_ids, tokenizer_sha256, train_bpe

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "data" / "embedded" / "kjv_train.jsonl.gz"


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    """A tiny byte-level BPE (400 ids) trained on a few hundred verses of the embedded corpus."""
    with gzip.open(CORPUS, "rt", encoding="utf-8") as f:
        docs = [json.loads(line)["text"] for line in islice(f, 12)]
    verses = [v for d in docs for v in d.split(". ")][:400]
    out = tmp_path_factory.mktemp("tok")
    train_bpe(verses, out, vocab_size=400)
    return out


@pytest.fixture(scope="module")
def tok(tok_dir):
    from prealign_scale.text.tokenizer import load_tokenizer

    return load_tokenizer(tok_dir)


def R(words, langs=None):
    return RawEntry(tuple(words), tuple(langs or ["en"] + ["de"] * (len(words) - 1)))


def build(entries, tok, **kw):
    kw.setdefault("source_lang", "en")
    return build_alignment_table(entries, tok, tokenizer_sha256="t" * 64, dictionary_sha256="d" * 64, **kw)


# ---------------------------------------------------------------------------------------------- table


def test_tokens_ids_and_meta(tok):
    raw = [R(["house", "Haus", "Gebäude"]), R(["bank", "Bank", "banque"], ["en", "de", "fr"]), R(["god", "Gott"])]
    table = build(raw, tok, heldout_fraction=0.0, seed=3, problems=2)
    # Ordered by the sorted-words key: "Bank\tbank\tbanque" < "Gebäude\tHaus\thouse" < "Gott\tgod".
    assert [e.words for e in table.entries] == [("bank", "Bank", "banque"), ("house", "Haus", "Gebäude"),
                                                ("god", "Gott")]
    assert [e.id for e in table.entries] == [0, 1, 2]
    assert [e.langs for e in table.entries] == [("en", "de", "fr"), ("en", "de", "de"), ("en", "de")]
    for e in table.entries:
        assert e.split == ALIGN
        assert e.tokens == tuple(tuple(mid_sentence_ids(tok, w)) for w in e.words)
    assert table.entries[1].tokens[0] == tuple(tok.encode(" house", add_special_tokens=False))
    assert table.meta == {
        "kind": "dictionary", "tokenizer_sha256": "t" * 64, "dictionary_sha256": "d" * 64,
        "vocab_size": len(tok), "vocab_offset": 0, "source_lang": "en", "langs": ["de", "en", "fr"],
        "heldout_fraction": 0.0, "split_rule": SPLIT_RULE, "seed": 3, "coverage": None, "problems": 2,
        "counts": {"raw_entries": 3, "duplicate_words": 0, "merged": 0, "dropped": 0, "entries": 3,
                   "words": 8, "align": 3, "heldout": 0, "groups": 3, "heldout_groups": 0, "problems": 2},
    }
    assert len(tok) == 400


def test_dedup_merge_and_drop(tok):
    raw = [
        R(["house", "Haus", "Haus", " house "], ["en", "de", "de", "en"]),  # 2 repeated words
        R(["Haus", "house"], ["de", "en"]),  # the same set as the first: merged into it
        R(["light", "light"], ["en", "en"]),  # one word left: dropped
        R(["light", "light"], ["en", "de"]),  # same text, different languages: kept
        R(["god", "  "]),  # an empty word: dropped entry
    ]
    cleaned, counts = clean_entries(raw)
    assert cleaned == [R(["house", "Haus"]), R(["light", "light"], ["en", "de"])]
    assert counts == {"raw_entries": 5, "duplicate_words": 3, "merged": 1, "dropped": 2}
    table = build(raw, tok, heldout_fraction=0.0)
    assert [(e.id, e.words) for e in table.entries] == [(0, ("house", "Haus")), (1, ("light", "light"))]
    assert table.meta["counts"]["entries"] == 2 and table.meta["counts"]["words"] == 4


def test_split_is_deterministic(tok):
    raw = [R([f"w{i}", f"v{i}"]) for i in range(200)]
    a, b, c = (build(raw, tok, heldout_fraction=0.3, seed=s) for s in (7, 7, 8))
    splits = [[e.split for e in t.entries] for t in (a, b, c)]
    assert splits[0] == splits[1]
    assert splits[0] != splits[2]
    # No two entries share a word: 200 groups of one; the split is the group rule over the entry keys.
    keys = [entry_key(e.words) for e in a.entries]
    assert splits[0] == leak_free_splits(keys, list(range(200)), 7, 0.3)
    for e in a.entries:
        assert entry_key(e.words) == "\t".join(sorted(e.words))
    counts = a.meta["counts"]
    assert counts["heldout"] == splits[0].count(HELDOUT) == 60  # round(0.3 * 200), met exactly by 1-entry groups
    assert counts["groups"] == 200 and counts["heldout_groups"] == 60
    assert counts["align"] + counts["heldout"] == 200
    # The same entries in another input order give the same table.
    assert build(list(reversed(raw)), tok, heldout_fraction=0.3, seed=7).entries == a.entries


def test_bad_arguments(tok):
    with pytest.raises(ValueError, match=r"heldout_fraction must be in \[0, 1\), got 1.0"):
        build([R(["a", "b"])], tok, heldout_fraction=1.0)
    with pytest.raises(ValueError, match="no dictionary entry with at least two distinct words"):
        build([R(["a", "a"], ["en", "en"])], tok)
    with pytest.raises(ValueError, match=r"source_lang='fr' appears in no entry \(languages present: \['de', 'en'\]\)"):
        build([R(["a", "b"])], tok, source_lang="fr")


def test_save_and_load_round_trip(tok, tmp_path):
    table = build([R(["house", "Haus"]), R(["bank", "Bank", "banque"], ["en", "de", "fr"])], tok)
    table.save(tmp_path / "t")
    loaded = AlignmentTable.load(tmp_path / "t")
    assert loaded.entries == table.entries
    assert loaded.meta == table.meta


# ---------------------------------------------------------------------------------------------- coverage


def test_coverage_exact(tok):
    raw = [R(["house", "Haus"]), R(["Light", "Licht"]), R(["GOD", "Gott"]), R(["die", "the"], ["en", "de"])]
    texts = ["The house, the HOUSE and light! God's house.", "Light of the house"]
    report = coverage_report(build(raw, tok, heldout_fraction=0.0), tok, texts, "en", top_n=3)
    ids = lambda s: len(tok.encode(s, add_special_tokens=False))
    # Words: The house the HOUSE and light God s house | Light of the house  (12; "'s" counts as "s").
    # Covered (source words house, light, god; "the" is a target word there): 5 + 2 = 7.
    assert report == {
        "docs": 2,
        "words": 13,
        "covered_words": 7,
        "word_coverage": 7 / 13,
        "tokens": ids(texts[0]) + ids(texts[1]),
        "covered_tokens": 3 * ids(" house") + ids(" HOUSE") + ids(" light") + ids(" God") + ids("Light"),
        "token_coverage": report["covered_tokens"] / report["tokens"],
        "heldout_words": 0, "heldout_word_coverage": 0.0, "heldout_tokens": 0, "heldout_token_coverage": 0.0,
        "distinct_words": 7,
        "distinct_covered": 3,
        "distinct_heldout": 0,
        "by_lang": {"de": {k: report[k] for k in (
            "covered_words", "word_coverage", "covered_tokens", "token_coverage",
            "heldout_words", "heldout_word_coverage", "heldout_tokens", "heldout_token_coverage")}},
        "top_uncovered": [["the", 3], ["and", 1], ["of", 1]],
    }
    assert report["covered_tokens"] > 0 and report["tokens"] > report["covered_tokens"]
    assert coverage_report([R(["x", "y"])], tok, [], "en")["word_coverage"] == 0.0


def test_normalize_word():
    assert [normalize_word(w) for w in (" House,", "Ġhouse", "▁Haus", "'s", "«Wort»", "o'clock")] == [
        "house", "house", "haus", "s", "wort", "o'clock"]


# ---------------------------------------------------------------------------------------------- CLI


def run_cli(*args):
    return subprocess.run([sys.executable, "data_tools/build_table.py", *map(str, args)], check=False, cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_cli_builds_a_table(tok_dir, tmp_path):
    d = tmp_path / "en-de.tsv"
    d.write_text("house\tHaus\nbad line here\nlight\tLicht\nGod\tGott\nhouse\tGebäude\n", encoding="utf-8")
    corpus = tmp_path / "sample.jsonl"
    corpus.write_text('{"text": "The house of God."}\n{"text": "Let there be light."}\n{"text": "x y"}\n',
                      encoding="utf-8")
    out = tmp_path / "table"
    proc = run_cli("--dict", d, "--tokenizer", tok_dir, "--out", out, "--source-lang", "en", "--target-lang",
                   "de", "--seed", "1", "--heldout-fraction", "0", "--coverage-corpus", corpus, "--coverage-docs", 2)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"{d}:2: expected 2 fields (source<TAB>target), got 3 (whitespace-separated)"
    assert "3 entries (3 align, 0 heldout), 7 words" in proc.stdout
    assert "coverage of 2 docs: 37.50% of 8 words" in proc.stdout  # house, God, light of 8 words
    table = AlignmentTable.load(out)
    assert [e.words for e in table.entries] == [("house", "Haus", "Gebäude"), ("God", "Gott"), ("light", "Licht")]
    assert table.meta["tokenizer_sha256"] == tokenizer_sha256(tok_dir)
    assert table.meta["problems"] == 1 and table.meta["seed"] == 1 and table.meta["source_lang"] == "en"
    assert table.meta["coverage"]["covered_words"] == 3 and table.meta["coverage"]["docs"] == 2
    # A coverage corpus that cannot be read is an error before anything is written.
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"body": "no text field"}\n', encoding="utf-8")
    proc = run_cli("--dict", d, "--tokenizer", tok_dir, "--out", tmp_path / "t2", "--coverage-corpus", broken)
    assert proc.returncode == 2 and proc.stderr.startswith(f"error: {broken}:1: ")
    assert not (tmp_path / "t2").exists()


def test_cli_errors_exit_2(tok_dir, tmp_path, capsys, monkeypatch):
    bad = tmp_path / "bad.tsv"
    bad.write_text("a\tb\tc\n", encoding="utf-8")
    proc = run_cli("--dict", bad, "--tokenizer", tok_dir, "--out", tmp_path / "t")
    assert proc.returncode == 2
    assert proc.stderr == (f"error: {bad}: no valid dictionary entry (1 bad lines, format tsv); first bad lines: "
                           f"{bad}:1: expected 2 fields (source<TAB>target), got 3 (tab-separated)\n")
    assert not (tmp_path / "t").exists()
    # --strict stops at the first bad line (in-process: the same main() the script runs).
    monkeypatch.syspath_prepend(str(REPO))
    from data_tools.build_table import main

    mixed = tmp_path / "mixed.tsv"
    mixed.write_text("house\tHaus\ntree\t\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["--dict", str(mixed), "--tokenizer", str(tok_dir), "--out", str(tmp_path / "t2"), "--strict"]) == 2
    assert capsys.readouterr().err.startswith(f"error: {mixed}:2: empty target word (strict mode")
    assert main(["--dict", str(tmp_path / "missing.tsv"), "--tokenizer", str(tok_dir),
                 "--out", str(tmp_path / "t3")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'missing.tsv'}: dictionary file not found\n"
    assert not (tmp_path / "t2").exists() and not (tmp_path / "t3").exists()


def test_no_valid_line_names_the_first_bad_lines_and_exits_2(tok_dir, tmp_path):
    """Issue 9, item 6: a file without one valid line names the file and its first bad lines (file:line)."""
    bad = tmp_path / "allbad.tsv"
    bad.write_text("a\tb\tc\n\tx\nonlyone\nd\te\tf\tg\n", encoding="utf-8")
    proc = run_cli("--dict", bad, "--tokenizer", tok_dir, "--out", tmp_path / "t")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"error: {bad}: no valid dictionary entry (4 bad lines, format tsv); first bad lines: ")
    assert f"{bad}:1: expected 2 fields" in proc.stderr and f"{bad}:2: empty source word" in proc.stderr
    assert f"{bad}:3: expected 2 fields" in proc.stderr and f"{bad}:4:" not in proc.stderr  # the first three
    assert not (tmp_path / "t").exists()


def test_a_word_longer_than_the_token_limit_names_its_line(tok, tok_dir, tmp_path):
    """Issue 9, item 9: the table builder bounds the tokens of a word and names the word's file:line."""
    from prealign_scale.alignment.build_table import MAX_WORD_TOKENS
    from prealign_scale.alignment.dictionaries import MAX_WORD_CHARS, read_dictionary

    long_word = "\u4e00\u4e8c\u4e09\u56db" * (MAX_WORD_CHARS // 4)  # 100 CJK characters: bytes to this tokenizer
    assert len(long_word) <= MAX_WORD_CHARS
    d = tmp_path / "d.tsv"
    d.write_text(f"house\tHaus\nlong\t{long_word}\n", encoding="utf-8")
    result = read_dictionary(d, src_lang="en", tgt_lang="de")
    assert result.problems == []
    with pytest.raises(ValueError, match=rf"^{d}:2: word '.*'\.\.\. is \d+ tokens, more than the limit "
                                         rf"MAX_WORD_TOKENS={MAX_WORD_TOKENS}"):
        build(result.entries, tok)
    proc = run_cli("--dict", d, "--tokenizer", tok_dir, "--out", tmp_path / "t")
    assert proc.returncode == 2 and proc.stderr.startswith(f"error: {d}:2: word ") and "Traceback" not in proc.stderr
