"""data_tools/train_tokenizer.py trains a tokenizer that transformers loads, with the asked special tokens."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from prealign_scale.text.tokenizer import tokenizer_sha256, train_bpe

ROOT = Path(__file__).resolve().parents[1]
KJV = ROOT / "data" / "embedded" / "kjv_train.jsonl.gz"
TOOL = ROOT / "data_tools" / "train_tokenizer.py"


def kjv_texts(n: int) -> list[str]:
    out = []
    with gzip.open(KJV, "rt", encoding="utf-8") as f:
        for line in f:
            out.append(json.loads(line)["text"])
            if len(out) == n:
                break
    return out


def run_tool(*args: str) -> subprocess.CompletedProcess:
    # cwd elsewhere: the tool must find the package by itself (it puts the repo root on sys.path)
    return subprocess.run(
        [sys.executable, str(TOOL), *args], check=False, capture_output=True, text=True, cwd="/", timeout=120
    )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A .jsonl.gz corpus of 30 KJV chapters plus a plain-text second corpus of 10 more."""
    d = tmp_path_factory.mktemp("tokcorpus")
    texts = kjv_texts(40)
    with gzip.open(d / "a.jsonl.gz", "wt", encoding="utf-8") as f:
        for i, t in enumerate(texts[:30]):
            f.write(json.dumps({"id": i, "body": t}) + "\n")
    (d / "b.txt").write_text("\n".join(t.replace("\n", " ") for t in texts[30:]) + "\n")
    return d


def test_cli_trains_loadable_tokenizer(corpus, tmp_path):
    from transformers import PreTrainedTokenizerFast

    out = tmp_path / "tok"
    r = run_tool(
        "--corpus",
        str(corpus / "a.jsonl.gz"),
        str(corpus / "b.txt"),
        "--text-field",
        "body",
        "--vocab-size",
        "300",
        "--bos",
        "<s>",
        "--eos",
        "</s>",
        "--pad",
        "<pad>",
        "--unk",
        "<unk>",
        "--out",
        str(out),
    )
    assert r.returncode == 0, r.stderr
    tok = PreTrainedTokenizerFast.from_pretrained(str(out))
    assert len(tok) == 300
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == ("<s>", "</s>", "<pad>", "<unk>")
    ids = [tok.convert_tokens_to_ids(t) for t in ("<s>", "</s>", "<pad>", "<unk>")]
    assert ids == [0, 1, 2, 3]  # specials come first, in the order bos, eos, pad, unk
    assert (
        tok.decode(tok.encode("In the beginning God created", add_special_tokens=False))
        == "In the beginning God created"
    )
    lines = r.stdout.splitlines()
    assert "vocab size: 300" in lines
    assert "special ids: bos='<s>':0, eos='</s>':1, pad='<pad>':2, unk='<unk>':3" in lines
    assert f"tokenizer sha256: {tokenizer_sha256(out)}" in lines


def test_cli_max_docs_equals_library_on_first_docs(corpus, tmp_path):
    """--max-docs 12 trains exactly what train_bpe trains on the first 12 documents (BPE is deterministic)."""
    r = run_tool(
        "--corpus",
        str(corpus / "a.jsonl.gz"),
        "--text-field",
        "body",
        "--vocab-size",
        "320",
        "--max-docs",
        "12",
        "--out",
        str(tmp_path / "cli"),
    )
    assert r.returncode == 0, r.stderr
    train_bpe(kjv_texts(12), tmp_path / "lib", vocab_size=320)
    assert tokenizer_sha256(tmp_path / "cli") == tokenizer_sha256(tmp_path / "lib")
    train_bpe(kjv_texts(13), tmp_path / "lib13", vocab_size=320)
    assert tokenizer_sha256(tmp_path / "cli") != tokenizer_sha256(tmp_path / "lib13")


def test_cli_errors_before_training(corpus, tmp_path):
    missing = tmp_path / "missing.jsonl"
    r = run_tool("--corpus", str(corpus / "b.txt"), str(missing), "--out", str(tmp_path / "t1"))
    assert r.returncode == 2
    assert f"{missing}: corpus file not found" in r.stderr
    assert not (tmp_path / "t1").exists()

    r = run_tool("--corpus", str(corpus / "a.jsonl.gz"), "--out", str(tmp_path / "t2"))  # field is "body"
    assert r.returncode == 2
    assert f"{corpus / 'a.jsonl.gz'}:1: missing text field 'text'" in r.stderr

    r = run_tool("--corpus", str(corpus / "b.txt"), "--vocab-size", "100", "--out", str(tmp_path / "t3"))
    assert r.returncode == 2
    assert "vocab_size=100 is below the 256 byte symbols" in r.stderr

    r = run_tool(
        "--corpus", str(corpus / "b.txt"), "--bos", "<x>", "--eos", "<x>", "--out", str(tmp_path / "t4")
    )
    assert r.returncode == 2
    assert "special tokens must be distinct" in r.stderr
