"""A tiny English-Clone data set for the engine tests, built with the project's own tools.

tokenizer (byte-level BPE, 400 ids) -> English/Clone split + Clone table (vocab 800) -> 4 shards of 8
packed samples of 64 tokens (2 ranks x 1 reader x 2 shards each), with input-only code-switching.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

KJV = ROOT / "data/embedded/kjv_train.jsonl.gz"


def build_tiny_data(root: Path, *, n_docs: int = 60, seq_len: int = 64, samples_per_shard: int = 8,
                    n_shards: int = 4) -> dict:
    from prealign_scale.alignment.clone import build_english_clone
    from prealign_scale.data.build_config import BuildConfig
    from prealign_scale.data.build_shards import build_shards
    from prealign_scale.text.tokenizer import train_bpe

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with gzip.open(KJV, "rt") as f:
        lines = [line for _, line in zip(range(n_docs), f)]
    (root / "corpus.jsonl").write_text("".join(lines))
    train_bpe((json.loads(x)["text"] for x in lines), root / "tok", vocab_size=400)
    build_english_clone(root / "corpus.jsonl", root / "tok", root / "clone", clone_fraction=0.2, top_n=150, seed=0)
    cfg = BuildConfig(corpora={"en": [str(root / "clone/en.jsonl.gz")], "clone": [str(root / "clone/clone.jsonl.gz")]},
                      tokenizer=str(root / "tok"), table=str(root / "clone/table"), clone_langs=["clone"],
                      mixture={"en": 0.8, "clone": 0.2}, p=0.1, seq_len=seq_len,
                      samples_per_shard=samples_per_shard, shard_multiple=n_shards, docs_per_chunk=16,
                      total_tokens=seq_len * samples_per_shard * n_shards)
    build_shards(cfg, root / "shards", workers=1, progress=False)
    return {"tokenizer": root / "tok", "table": root / "clone/table", "shards": root / "shards"}


def write_multiword_table(folder: Path, vocab_size: int, *, n_entries: int = 48, seed: int = 0) -> Path:
    """A synthetic table whose entries have 2 or 3 words of 1-3 tokens each (ranks get unequal word counts,
    and words have next-token targets, unlike the single-token English-Clone entries)."""
    import random

    from prealign_scale.alignment.table import AlignmentTable, Entry

    rng = random.Random(seed)
    entries = []
    for i in range(n_entries):
        k = rng.choice((2, 2, 3))
        tokens = tuple(tuple(rng.randrange(3, vocab_size) for _ in range(rng.randint(1, 3))) for _ in range(k))
        entries.append(Entry(id=i, words=tuple(f"w{i}_{j}" for j in range(k)), langs=("en", "de", "fr")[:k],
                             tokens=tokens))
    AlignmentTable(entries, {"kind": "dictionary", "vocab_size": vocab_size, "vocab_offset": 0}).save(folder)
    return Path(folder)


if __name__ == "__main__":
    print(build_tiny_data(Path(sys.argv[1])))
