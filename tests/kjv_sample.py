"""The first chapters of the embedded corpus and a BPE trained on them: the data-tool tests' small inputs."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from prealign_scale.text.tokenizer import train_bpe

KJV = Path(__file__).resolve().parents[1] / "data/embedded/kjv_train.jsonl.gz"


def kjv_lines(n: int) -> list[str]:
    """The first `n` JSONL lines (chapters, newline included) of data/embedded/kjv_train.jsonl.gz."""
    with gzip.open(KJV, "rt") as f:
        return [line for _, line in zip(range(n), f)]


def train_tokenizer_on(lines: list[str], out: Path, vocab_size: int) -> None:
    """A byte-level BPE of `vocab_size` trained on the texts of JSONL `lines`, saved in `out`."""
    train_bpe((json.loads(x)["text"] for x in lines), out, vocab_size=vocab_size)
