"""Check a shard folder against its manifest: checksums, counts, sample shapes, id ranges, meta.json fields.

Usage: python data_tools/verify_shards.py runs/shards

Prints `OK: ...` and exits 0 when every shard matches; otherwise prints `BAD: ...` and one line per problem,
each naming its shard (and sample), and exits 1. Every shard is checked even when earlier ones are damaged.
A missing or unusable manifest.json is reported the same way (exit 1); bad arguments exit 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prealign_scale.data.verify import verify_shards


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("folder")
    a = p.parse_args(argv)
    report = verify_shards(a.folder)
    print("\n".join(report.lines()))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
