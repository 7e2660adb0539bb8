"""Check a shard folder against its manifest: checksums, counts, sample shapes, id ranges, meta.json fields.

Usage: python data_tools/verify_shards.py runs/shards

Prints `OK: ...` and exits 0 when every shard matches; otherwise prints `BAD: ...` and one line per problem,
each naming its shard (and sample), and exits 1. Every shard is checked even when earlier ones are damaged.
A missing or unusable manifest.json is reported the same way (exit 1); bad arguments (a path that is a file or
does not exist) exit 2 with one line `error: ...`.
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
    folder = Path(a.folder)
    if not folder.is_dir():  # a bad argument, not a damaged shard folder
        what = "is a file, not a shard folder" if folder.exists() else "no such folder"
        print(f"error: {folder}: {what}", file=sys.stderr)
        return 2
    report = verify_shards(a.folder)
    print("\n".join(report.lines()))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
