"""Build the shipped evaluation sets (data/eval/) from the embedded KJV corpus, or render the facts into a
training corpus.

Usage (from the repository root):

    python data_tools/make_eval_sets.py                       # (re)writes data/eval/ (deterministic)
    python data_tools/make_eval_sets.py --fact-corpus runs/facts.en.jsonl --repeats 20

The first form writes the genre passages (genre_train.en.jsonl, genre_test.en.jsonl, genre_test.clone.jsonl),
the parallel sentences (parallel.en-clone.jsonl), the synthetic facts (facts.jsonl) and their templates
(fact_templates.json); see docs/evaluation.md. The second renders every fact REPEATS times with the
source-language templates into a JSONL corpus ({"text"}) to pass to the shard builder as an extra corpus of
the source language only (list it FIRST for that language: a mixture quota takes documents in corpus order).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from prealign_scale.eval.eval_sets import write_eval_sets, write_fact_corpus
from prealign_scale.eval.io import EvalInputError

EMBEDDED = ROOT / "data" / "embedded"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--out", default=str(ROOT / "data" / "eval"), help="output folder (default data/eval)")
    p.add_argument("--train-corpus", default=str(EMBEDDED / "kjv_train.jsonl.gz"))
    p.add_argument("--heldout-corpus", default=str(EMBEDDED / "kjv_heldout.jsonl.gz"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-per-genre", type=int, default=100)
    p.add_argument("--test-per-genre", type=int, default=30)
    p.add_argument("--parallel", type=int, default=300, help="parallel sentences (default 300)")
    p.add_argument("--subjects", type=int, default=200, help="invented fact subjects (default 200)")
    g = p.add_argument_group("fact corpus (instead of the sets)")
    g.add_argument("--fact-corpus", metavar="OUT.jsonl", help="render the facts into this training corpus file")
    g.add_argument("--facts", default=str(ROOT / "data" / "eval" / "facts.jsonl"))
    g.add_argument("--templates", default=str(ROOT / "data" / "eval" / "fact_templates.json"))
    g.add_argument("--lang", default="en", help="language of the rendered documents (default en)")
    g.add_argument("--repeats", type=int, default=10, help="times each fact is stated (default 10)")
    g.add_argument("--facts-per-doc", type=int, default=1, help="sentences per document (default 1)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.fact_corpus:
            n = write_fact_corpus(args.facts, args.templates, args.fact_corpus, lang=args.lang,
                                  repeats=args.repeats, seed=args.seed, facts_per_doc=args.facts_per_doc)
            print(f"{args.fact_corpus}: {n} documents ({args.repeats} repeats, lang {args.lang})")
            return 0
        counts = write_eval_sets(args.out, args.train_corpus, args.heldout_corpus, seed=args.seed,
                                 train_per_genre=args.train_per_genre, test_per_genre=args.test_per_genre,
                                 parallel=args.parallel, subjects=args.subjects)
    except (EvalInputError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name, n in counts.items():
        print(f"  {Path(args.out) / name}: {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
