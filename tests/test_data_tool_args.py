"""Argument mistakes of the data tools: one line `error: ...` on stderr, exit 2, no traceback, before any work
(issue 9, item 5): LANG=VALUE flags without `=`, output folders that are files, input folders that are files or
missing. Each tool's main() is called in-process (the same function the script runs)."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
from reliability_cases import exit_line, record_case

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def tool(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))
    return lambda name: importlib.import_module(f"data_tools.{name}").main


@pytest.fixture
def paths(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder\n")
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"text": "in the beginning"}) + "\n")
    return {"file": a_file, "corpus": corpus, "dir": tmp_path, "missing": tmp_path / "missing"}


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


@pytest.mark.parametrize("flags,message", [
    (["--corpus", "c.jsonl"], "error: --corpus: expected LANG=VALUE, got 'c.jsonl'"),
    (["--corpus", "en=c.jsonl", "--mixture", "en0.9"], "error: --mixture: expected LANG=VALUE, got 'en0.9'"),
])
def test_build_shards_lang_value_flags(tool, paths, capsys, flags, message):
    main = tool("build_shards")
    rc = main(["--out", str(paths["dir"] / "out"), "--tokenizer", "tok", "--no-progress", *flags])
    assert rc == 2
    line = one_error_line(capsys)
    assert line == message
    record_case("data tools", f"build_shards.py {flags[-2]} {flags[-1]} (no LANG=)", "exit 2, one line naming the flag",
                exit_line(rc, line))


def test_build_shards_out_is_a_file(tool, paths, capsys):
    main = tool("build_shards")
    args = ["--out", str(paths["file"]), "--tokenizer", "tok", "--corpus", f"en={paths['corpus']}", "--no-progress"]
    rc = main(args)
    assert rc == 2
    line = one_error_line(capsys)
    assert line == f"error: {paths['file']}: is a file, not a folder (--out names the shard " \
                   "folder to create or resume)"
    assert paths["file"].read_text() == "not a folder\n"
    record_case("data tools", "build_shards.py --out naming an existing file", "exit 2, one line; the file untouched",
                exit_line(rc, line) + f"; file untouched: {paths['file'].read_text() == 'not a folder' + chr(10)}")


@pytest.mark.parametrize("which", ["file", "missing"])
def test_verify_shards_wants_a_folder(tool, paths, capsys, which):
    rc = tool("verify_shards")([str(paths[which])])
    assert rc == 2
    what = "is a file, not a shard folder" if which == "file" else "no such folder"
    line = one_error_line(capsys)
    assert line == f"error: {paths[which]}: {what}"
    record_case("data tools", f"verify_shards.py given a {'file' if which == 'file' else 'missing folder'}",
                "exit 2, one line", exit_line(rc, line))


def test_train_tokenizer_out_is_a_file_fails_before_training(tool, paths, capsys):
    from prealign_scale.text.tokenizer import train_bpe

    def never_read():  # training would consume the texts: the check comes first
        raise AssertionError("the corpus was read: the check came after training")
        yield ""

    with pytest.raises(ValueError, match="is a file, not a folder"):
        train_bpe(never_read(), paths["file"], vocab_size=300)
    main = tool("train_tokenizer")
    rc = main(["--corpus", str(paths["corpus"]), "--out", str(paths["file"]), "--vocab-size", "300"])
    assert rc == 2
    line = one_error_line(capsys)
    assert line == f"error: {paths['file']}: is a file, not a folder (the tokenizer is saved into a folder)"
    record_case("data tools", "train_tokenizer.py --out naming an existing file",
                "exit 2, one line, before training (the corpus is not read)", exit_line(rc, line) + "; corpus not read")


def test_build_table_out_is_a_file(tool, paths, capsys):
    d = paths["dir"] / "d.tsv"
    d.write_text("house\tHaus\n")
    rc = tool("build_table")(["--dict", str(d), "--tokenizer", "tok", "--out", str(paths["file"])])
    assert rc == 2
    line = one_error_line(capsys)
    assert line == f"error: {paths['file']}: is a file, not a folder (--out names the table folder)"
    record_case("data tools", "build_table.py --out naming an existing file", "exit 2, one line", exit_line(rc, line))


def test_make_english_clone_out_is_a_file(tool, paths, capsys):
    main = tool("make_english_clone")
    rc = main(["--corpus", str(paths["corpus"]), "--tokenizer", "tok", "--out", str(paths["file"])])
    assert rc == 2
    line = one_error_line(capsys)
    assert line.startswith(f"error: {paths['file']}: is a file, not a folder")
    record_case("data tools", "make_english_clone.py --out naming an existing file", "exit 2, one line",
                exit_line(rc, line))


def test_make_eval_sets_out_is_a_file_and_fact_corpus_a_folder(tool, paths, capsys):
    main = tool("make_eval_sets")
    for flag, path, what, case in [
        ("--out", paths["file"], "is a file, not a folder", "make_eval_sets.py --out naming an existing file"),
        ("--fact-corpus", paths["dir"], "is a folder, not a file", "make_eval_sets.py --fact-corpus naming a folder"),
    ]:
        rc = main([flag, str(path)])
        assert rc == 2
        line = one_error_line(capsys)
        assert line.startswith(f"error: {path}: {what}")
        record_case("data tools", case, "exit 2, one line", exit_line(rc, line))
