"""Make the shuffled-dictionary control table: the same words as TABLE, paired at random.

    python data_tools/shuffle_table.py --table runs/table --out runs/table_shuffled [--seed 0]

Every align entry keeps its source-language words and takes the other words of another align entry (a
derangement fixed by the seed); held-out entries are unchanged (prealign_scale/alignment/shuffled.py). A run
whose phase 1 reads this table (data.table_dir) gets the same extra training on the same words as PreAlign,
without the alignment: the control arm of docs/results/real_pair_en_es.md. Errors: one line, exit 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python data_tools/shuffle_table.py` without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prealign_scale.alignment.shuffled import shuffle_pairs
from prealign_scale.alignment.table import AlignmentTable


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--table", required=True, metavar="DIR", help="the alignment table to shuffle")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder for the shuffled table")
    p.add_argument("--seed", type=int, default=0, help="seed of the random pairing (default 0)")
    a = p.parse_args(argv)
    if Path(a.out).resolve() == Path(a.table).resolve():
        print(f"error: --out {a.out} is the input table; write the control next to it", file=sys.stderr)
        return 2
    if Path(a.out).exists() and not Path(a.out).is_dir():
        print(f"error: {a.out}: is a file, not a folder (--out names the table folder)", file=sys.stderr)
        return 2
    try:
        table = shuffle_pairs(AlignmentTable.load(a.table), a.seed)
        table.save(a.out)
    except (FileNotFoundError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    n = table.meta["shuffled"]["entries_repaired"]
    print(f"table {a.out}: {n} align entries re-paired at random (seed {a.seed}), "
          f"{len(table.part('heldout'))} heldout entries unchanged")
    return 0


if __name__ == "__main__":
    sys.exit(main())
