"""Shard builder throughput vs raw tokenisation and vs the reference release's approach (issue 2 §7).

Measured in one run on the same corpus and cores:
  raw        `tokenizers` encode of every document on one thread (the ceiling for one worker)
  builder-1  the full shard builder (segmentation + switching + packing + writing), 1 worker process
  builder-2  the same with 2 worker processes
  reference  the release's approach: tokenise, then a Python per-token loop over `convert_ids_to_tokens`
             guessing word starts from the 'Ġ' prefix and switching with probability p (METHOD.md §6)

Usage: python benchmarks/bench_shard_builder.py [--vocab 8192] [--repeat 2] [--copies 4]
                                                     (writes benchmarks/results/)

--copies N measures on the English-Clone English part written N times over (about 0.8M tokens each): with
one copy a 2-worker build lasts ~0.7 s, and the fixed costs (two pool starts, the serial plan between the
stages) are a visible share of it. Every measurement sees the same N copies.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("RAYON_NUM_THREADS", "1")

from prealign_scale.alignment.clone import build_english_clone
from prealign_scale.data.build_config import BuildConfig
from prealign_scale.data.build_shards import build_shards
from prealign_scale.text.corpus import iter_documents
from prealign_scale.text.tokenizer import load_tokenizer, train_bpe

KJV = ROOT / "data/embedded/kjv_train.jsonl.gz"


def bench_raw(tok, texts) -> tuple[float, int]:
    t = time.perf_counter()
    n = sum(len(tok.encode(x, add_special_tokens=False).ids) for x in texts)
    return time.perf_counter() - t, n


def bench_reference(hf_tok, texts, covered: set[int], offset: int, p=0.05, seed=0) -> tuple[float, int]:
    """The release's collator (src/data/lm_dataset.py, `codeswitch`), with its bugs fixed only where they
    would crash: tokenise, then walk the ids in Python, calling `convert_ids_to_tokens` per token to guess
    word starts from the 'Ġ' prefix, and look each word's token tuple up in a table {src tuple: [targets]}."""
    table = {(t,): [(t + offset,)] for t in covered}
    rng = random.Random(seed)
    t = time.perf_counter()
    n = 0
    for text in texts:
        input_ids = hf_tok(text, add_special_tokens=False)["input_ids"]
        out, labels = [], []
        cur = [input_ids[0]]
        for i in input_ids[1:] + [0]:
            if hf_tok.convert_ids_to_tokens(i).startswith("Ġ") or i == 0:
                word = tuple(cur)
                if rng.random() < p and word in table:
                    new = rng.choice(table[word])
                    out.extend(new)
                    labels.extend([word[0]] + [-100] * (len(new) - 1))
                else:
                    out.extend(word)
                    labels.extend(word)
                cur = [i]
            else:
                cur.append(i)
        n += len(out)
    return time.perf_counter() - t, n


def bench_builder(cfg: BuildConfig, workers: int) -> tuple[float, int]:
    out = Path(tempfile.mkdtemp(prefix="bench_shards_"))
    try:
        t = time.perf_counter()
        s = build_shards(cfg, out / "s", workers=workers, progress=False)
        return time.perf_counter() - t, s.tokens
    finally:
        shutil.rmtree(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--repeat", type=int, default=2, help="best of N for each measurement")
    ap.add_argument("--copies", type=int, default=4, help="the corpus written N times over (see the docstring)")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_build_"))
    texts = [d.text for d in iter_documents(KJV)]
    train_bpe(texts, work / "tok", vocab_size=a.vocab)
    build_english_clone(KJV, work / "tok", work / "clone", clone_fraction=0.1, top_n=a.vocab // 2)
    hf = load_tokenizer(work / "tok")
    en_texts = [d.text for d in iter_documents(work / "clone/en.jsonl.gz")] * a.copies
    corpus = work / "en_copies.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in en_texts))
    from prealign_scale.alignment.table import AlignmentTable

    table = AlignmentTable.load(work / "clone/table")
    covered = {t for e in table.part("align") for t in e.tokens[0]}
    # builder on the English part only (the same text the raw and reference measurements see)
    cfg = BuildConfig(corpora={"en": [str(corpus)]}, tokenizer=str(work / "tok"),
                      table=str(work / "clone/table"), p=0.05, seq_len=512, samples_per_shard=200,
                      shard_multiple=4, docs_per_chunk=64)
    best = lambda f: min((f() for _ in range(a.repeat)), key=lambda r: r[0])
    results = {}
    for name, fn in [("raw", lambda: bench_raw(hf.backend_tokenizer, en_texts)),
                     ("builder-1", lambda: bench_builder(cfg, 1)),
                     ("builder-2", lambda: bench_builder(cfg, 2)),
                     ("reference", lambda: bench_reference(hf, en_texts, covered, len(hf)))]:
        sec, n = best(fn)
        results[name] = {"seconds": round(sec, 3), "tokens": n, "tokens_per_s": round(n / sec)}
        print(f"{name:10s} {n:>10,} tokens  {sec:6.2f} s  {n / sec / 1e6:6.3f} M tokens/s", flush=True)
    r = {k: v["tokens_per_s"] for k, v in results.items()}
    ratios = {
        "builder1_vs_raw": round(r["builder-1"] / r["raw"], 3),
        "builder2_vs_builder1": round(r["builder-2"] / r["builder-1"], 3),
        "builder1_vs_reference": round(r["builder-1"] / r["reference"], 3),
    }
    print("ratios:", ratios, "(targets: >= 0.6, >= 1.7, >= 1.5)")
    record = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "processor": platform.processor() or platform.machine()},
              "vocab": a.vocab, "copies": a.copies, "docs": len(en_texts), "results": results, "ratios": ratios}
    (ROOT / "benchmarks/results").mkdir(parents=True, exist_ok=True)
    (ROOT / "benchmarks/results/shard_builder.json").write_text(json.dumps(record, indent=1) + "\n")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
