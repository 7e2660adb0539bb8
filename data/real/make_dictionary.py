"""Induce a bilingual word dictionary from a verse-aligned (sentence-aligned) text pair, deterministically.

Works for any pair given as a TSV of aligned units "id<TAB>source<TAB>target" (gzip allowed), e.g.
data/real/en-es/verses.en-es.tsv.gz. The method (association statistics, no training):

1. Words: maximal runs of letters (digits and punctuation split words), lower-cased; each unit counts a word
   once (a set of words per side).
2. For every source word e and target word t: c(e) and c(t), the units holding them, and c(e, t), the units
   holding both. Words in fewer than --min-count units are dropped.
3. Dice(e, t) = 2 c(e, t) / (c(e) + c(t)).
4. A pair (e, t) is kept when c(e, t) >= --min-count, Dice(e, t) >= --min-dice, and it is a near-best match
   both ways: Dice(e, t) >= --ratio x the best Dice of e over all target words AND >= --ratio x the best Dice
   of t over all source words. --ratio 1 keeps mutual best matches only (one-to-one); a lower ratio also keeps
   close runners-up (many-to-many: "said" -> "dijo", "dijeron").
5. Output: "source<TAB>target" lines (MUSE style), sorted by source word then decreasing Dice; the header
   comment lines record the parameters and counts.

Usage: python data/real/make_dictionary.py data/real/en-es/verses.en-es.tsv.gz data/real/en-es/dict.en-es.tsv
"""

import argparse
import gzip
import re
from collections import Counter
from itertools import product
from pathlib import Path

_WORD = re.compile(r"[^\W\d_]+")


def words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


def read_units(path: Path) -> list[tuple[set[str], set[str]]]:
    opener = gzip.open if path.suffix == ".gz" else open
    units = []
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            fields = line.rstrip("\n").split("\t")
            if len(fields) != 3:
                raise SystemExit(f"{path}:{lineno}: expected id<TAB>source<TAB>target, got {len(fields)} fields")
            units.append((words(fields[1]), words(fields[2])))
    return units


def induce(units: list[tuple[set[str], set[str]]], *, min_count: int, min_dice: float,
           ratio: float) -> list[tuple[str, str, float]]:
    """[(source, target, dice)] kept by the rule of the module docstring, sorted by source then -dice."""
    c_src = Counter(w for s, _ in units for w in s)
    c_tgt = Counter(w for _, t in units for w in t)
    joint: Counter = Counter()
    for s, t in units:
        joint.update(product([w for w in s if c_src[w] >= min_count], [w for w in t if c_tgt[w] >= min_count]))
    dice = {(e, t): 2 * n / (c_src[e] + c_tgt[t]) for (e, t), n in joint.items() if n >= min_count}
    best_src: dict[str, float] = {}
    best_tgt: dict[str, float] = {}
    for (e, t), d in dice.items():
        best_src[e] = max(best_src.get(e, 0.0), d)
        best_tgt[t] = max(best_tgt.get(t, 0.0), d)
    kept = [(e, t, d) for (e, t), d in dice.items()
            if d >= min_dice and d >= ratio * best_src[e] and d >= ratio * best_tgt[t]]
    return sorted(kept, key=lambda x: (x[0], -x[2], x[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("units", type=Path, help="TSV id<TAB>source<TAB>target (optionally .gz)")
    ap.add_argument("out", type=Path, help="output TSV source<TAB>target")
    ap.add_argument("--min-count", type=int, default=3, help="minimum units per word and per pair (default 3)")
    ap.add_argument("--min-dice", type=float, default=0.3, help="minimum Dice coefficient (default 0.3)")
    ap.add_argument("--ratio", type=float, default=0.7, help="near-best ratio, 1 = mutual best only (default 0.7)")
    args = ap.parse_args()
    units = read_units(args.units)
    pairs = induce(units, min_count=args.min_count, min_dice=args.min_dice, ratio=args.ratio)
    header = (f"# induced by data/real/make_dictionary.py from {args.units.name}: {len(units)} aligned units, "
              f"Dice, min_count={args.min_count} min_dice={args.min_dice} ratio={args.ratio}; "
              f"{len(pairs)} pairs, {len({e for e, _, _ in pairs})} source words\n")
    args.out.write_text(header + "".join(f"{e}\t{t}\n" for e, t, _ in pairs), encoding="utf-8")
    print(header.strip())


if __name__ == "__main__":
    main()
