"""Cost of the shard checksum at read (data.verify_sha256) vs the phase-2 reader's own throughput (issue 9).

Measured in one run on the same shard files (hot page cache: every pass reads each file once before timing):
  sha256      file_sha256 (streamed, 1 MiB pieces) over every shard: the check alone
  reader-off  ShardLoader over one epoch, verify_sha256=False (decode, checks, collation), num_workers=0
  reader-on   the same with verify_sha256=True (each shard hashed when the reader first opens it)

Rates are shard bytes per second (MB = 10^6 bytes). Without --shards it writes synthetic shards (random ids,
two documents a sample) into a temporary folder.

Usage: python benchmarks/bench_shard_verify.py [--shards DIR] [--n-shards 8] [--samples 256] [--seq-len 2048]
                                               [--micro-batch 8] [--repeat 3]      (writes benchmarks/results/)
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np
import webdataset as wds

from prealign_scale.data.shard_format import (
    FORMAT_VERSION,
    Manifest,
    Sample,
    encode_sample,
    file_sha256,
    sample_key,
    shard_name,
)
from prealign_scale.data.shard_reader import ShardLoader

VOCAB = 50304


def write_synthetic(folder: Path, n_shards: int, samples: int, seq_len: int) -> None:
    """Shards in the builder's format with a manifest holding real sha256s."""
    rng = np.random.default_rng(0)
    records = []
    for s in range(n_shards):
        with wds.TarWriter(str(folder / shard_name(s)), mtime=0) as w:
            for i in range(samples):
                ids = rng.integers(0, VOCAB, seq_len, dtype=np.uint32)
                seg = (np.arange(seq_len) >= seq_len // 2).astype(np.uint16)
                w.write(encode_sample(sample_key(s, i), Sample(ids, ids.astype(np.int32), seg, ["en", "en"],
                                                                [f"{s}-{i}-a", f"{s}-{i}-b"], 0)))
        records.append({"name": shard_name(s), "samples": samples, "sha256": file_sha256(folder / shard_name(s))})
    Manifest(FORMAT_VERSION, seq_len, VOCAB, ["en"], 1, records).write(folder)


def read_epoch(folder: Path, micro_batch: int, verify: bool) -> float:
    loader = ShardLoader(folder, micro_batch, dp_rank=0, dp_world_size=1, seed=0, num_workers=0,
                         shuffle_shards=False, verify_sha256=verify)
    t0 = time.perf_counter()
    for n, _ in enumerate(loader, 1):
        if n == loader.batches_per_epoch:
            break
    return time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", help="an existing shard folder (default: synthetic shards in a temporary folder)")
    p.add_argument("--n-shards", type=int, default=8)
    p.add_argument("--samples", type=int, default=256, help="samples per synthetic shard")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--repeat", type=int, default=3, help="timed passes of each measurement (the best is kept)")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(a.shards) if a.shards else Path(tmp)
        if not a.shards:
            write_synthetic(folder, a.n_shards, a.samples, a.seq_len)
        files = [folder / r["name"] for r in Manifest.read(folder).shards]
        total = sum(f.stat().st_size for f in files)
        for f in files:  # warm the page cache: every measurement then reads from memory
            f.read_bytes()
        timings = {"sha256": [], "reader-off": [], "reader-on": []}
        for _ in range(a.repeat):
            t0 = time.perf_counter()
            for f in files:
                file_sha256(f)
            timings["sha256"].append(time.perf_counter() - t0)
            timings["reader-off"].append(read_epoch(folder, a.micro_batch, verify=False))
            timings["reader-on"].append(read_epoch(folder, a.micro_batch, verify=True))
    best = {k: min(v) for k, v in timings.items()}
    result = {
        "bytes": total, "files": len(files), "repeat": a.repeat, "seconds": best,
        "mb_per_s": {k: round(total / s / 1e6, 1) for k, s in best.items()},
        "check_share_of_reading": round(best["sha256"] / best["reader-off"], 3),
        "reader_slowdown": round(best["reader-on"] / best["reader-off"] - 1, 3),
        "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()},
    }
    print(f"{len(files)} shards, {total / 1e6:.1f} MB (best of {a.repeat}):")
    for k, s in best.items():
        print(f"  {k:11s} {s:7.3f} s  {result['mb_per_s'][k]:8.1f} MB/s")
    print(f"  the check costs {100 * result['check_share_of_reading']:.1f}% of the reader's time; reader with "
          f"the check {100 * result['reader_slowdown']:+.1f}%")
    out = ROOT / "benchmarks" / "results" / "shard_verify.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
