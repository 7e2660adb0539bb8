"""Argument mistakes of the data tools: one line `error: ...` on stderr, exit 2, no traceback, before any work
(issue 9, item 5): LANG=VALUE flags without `=`, output folders that are files, input folders that are files or
missing. Each tool's main() is called in-process (the same function the script runs)."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

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
    assert main(["--out", str(paths["dir"] / "out"), "--tokenizer", "tok", "--no-progress", *flags]) == 2
    assert one_error_line(capsys) == message


def test_build_shards_out_is_a_file(tool, paths, capsys):
    main = tool("build_shards")
    args = ["--out", str(paths["file"]), "--tokenizer", "tok", "--corpus", f"en={paths['corpus']}", "--no-progress"]
    assert main(args) == 2
    assert one_error_line(capsys) == f"error: {paths['file']}: is a file, not a folder (--out names the shard " \
                                     "folder to create or resume)"
    assert paths["file"].read_text() == "not a folder\n"


@pytest.mark.parametrize("which", ["file", "missing"])
def test_verify_shards_wants_a_folder(tool, paths, capsys, which):
    assert tool("verify_shards")([str(paths[which])]) == 2
    what = "is a file, not a shard folder" if which == "file" else "no such folder"
    assert one_error_line(capsys) == f"error: {paths[which]}: {what}"


def test_train_tokenizer_out_is_a_file_fails_before_training(tool, paths, capsys):
    from prealign_scale.text.tokenizer import train_bpe

    def never_read():  # training would consume the texts: the check comes first
        raise AssertionError("the corpus was read: the check came after training")
        yield ""

    with pytest.raises(ValueError, match="is a file, not a folder"):
        train_bpe(never_read(), paths["file"], vocab_size=300)
    main = tool("train_tokenizer")
    assert main(["--corpus", str(paths["corpus"]), "--out", str(paths["file"]), "--vocab-size", "300"]) == 2
    assert one_error_line(capsys) == f"error: {paths['file']}: is a file, not a folder (the tokenizer is saved into " \
                                     "a folder)"


def test_build_table_out_is_a_file(tool, paths, capsys):
    d = paths["dir"] / "d.tsv"
    d.write_text("house\tHaus\n")
    assert tool("build_table")(["--dict", str(d), "--tokenizer", "tok", "--out", str(paths["file"])]) == 2
    assert one_error_line(capsys) == f"error: {paths['file']}: is a file, not a folder (--out names the table folder)"


def test_make_english_clone_out_is_a_file(tool, paths, capsys):
    main = tool("make_english_clone")
    assert main(["--corpus", str(paths["corpus"]), "--tokenizer", "tok", "--out", str(paths["file"])]) == 2
    assert one_error_line(capsys).startswith(f"error: {paths['file']}: is a file, not a folder")


def test_make_eval_sets_out_is_a_file_and_fact_corpus_a_folder(tool, paths, capsys):
    main = tool("make_eval_sets")
    assert main(["--out", str(paths["file"])]) == 2
    assert one_error_line(capsys).startswith(f"error: {paths['file']}: is a file, not a folder")
    assert main(["--fact-corpus", str(paths["dir"])]) == 2
    assert one_error_line(capsys).startswith(f"error: {paths['dir']}: is a folder, not a file")
