"""Check a shard folder against its manifest: checksums, counts, sample shapes, id ranges.

Usage: python data_tools/verify_shards.py runs/shards        (exit 1 and every bad shard named if any)
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
