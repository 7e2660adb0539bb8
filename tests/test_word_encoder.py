"""The cached byte-level encoder gives exactly the ids and word indices of the Rust tokenizer."""

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from prealign_scale.data.word_encoder import CachedByteLevelEncoder, RustWordEncoder, word_encoder
from prealign_scale.text.tokenizer import train_bpe

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def texts():
    with gzip.open(ROOT / "data/embedded/kjv_train.jsonl.gz", "rt") as f:
        return [json.loads(line)["text"] for line in f]


@pytest.fixture(scope="module")
def tok(texts, tmp_path_factory):
    return train_bpe(texts[:200], tmp_path_factory.mktemp("tok"), vocab_size=800).backend_tokenizer


TRICKY = [
    "Hello  world,\tthe  end\n\n  again ",  # runs of whitespace (the \\s+(?!\\S) rule), tabs, newlines
    "don't I'll we've 1234 3.14 ü Zoë naïve 東京 ...!? (house),",  # contractions, digits, non-ASCII
    "text with <|eos|> inside",  # a special token's text: falls back to the Rust path
    "   leading and trailing   ",
]


def test_identical_to_rust_encoder(tok, texts):
    fast, rust = CachedByteLevelEncoder(tok), RustWordEncoder(tok)
    for text in texts + TRICKY:
        a, b = fast.encode(text), rust.encode(text)
        assert np.array_equal(a.ids, b.ids) and np.array_equal(a.word_ids, b.word_ids), text[:80]
    for text in TRICKY:  # word strings: as written, leading space included
        e = fast.encode(text)
        starts = np.concatenate(([0], np.flatnonzero(np.diff(e.word_ids)) + 1, [e.ids.size]))
        for k in range(starts.size - 1):
            assert e.word(k, starts[k], starts[k + 1]) == rust.encode(text).word(k, starts[k], starts[k + 1])


def test_selection(tok):
    assert isinstance(word_encoder(tok), CachedByteLevelEncoder)
    from tokenizers import Tokenizer, models, pre_tokenizers

    ws = Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    ws.pre_tokenizer = pre_tokenizers.Whitespace()
    assert isinstance(word_encoder(ws), RustWordEncoder)
