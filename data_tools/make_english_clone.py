"""Build the English-Clone data: disjoint English and Clone corpora and the Clone identity dictionary.

Usage (from the repository root, after data_tools/train_tokenizer.py):

    python data_tools/make_english_clone.py --tokenizer runs/tok --out runs/clone --top-n 2000

Writes ``OUT/en.jsonl.gz`` and ``OUT/clone.jsonl.gz`` (different documents of the corpus, as JSONL with
"text" and the original fields; Clone text is stored as English and shifted to ids t+V when tokenised as
language "clone") and the alignment table t <-> t+V in ``OUT/table/``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from prealign_scale.alignment.clone import build_english_clone
from prealign_scale.text.corpus import FORMATS, CorpusError

DEFAULT_CORPUS = ROOT / "data" / "embedded" / "kjv_train.jsonl.gz"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", default=str(DEFAULT_CORPUS), help="English corpus (default: the embedded KJV)")
    p.add_argument("--text-field", default="text", help="JSONL field holding the text (default: text)")
    p.add_argument(
        "--format", dest="fmt", choices=FORMATS, default=None, help="corpus format (default: from name)"
    )
    p.add_argument("--tokenizer", required=True, metavar="DIR", help="tokenizer folder (train_tokenizer.py)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument(
        "--clone-fraction",
        type=float,
        default=0.1,
        help="share of the corpus characters that goes to the Clone part (default 0.1)",
    )
    sel = p.add_mutually_exclusive_group()
    sel.add_argument("--top-n", type=int, default=None, help="dictionary: the N most frequent word-like ids")
    sel.add_argument(
        "--fraction", type=float, default=None, help="dictionary: a random fraction of the word-like ids"
    )
    p.add_argument(
        "--heldout-fraction",
        type=float,
        default=0.1,
        help="share of dictionary entries held out for the unseen-word probes (default 0.1)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the corpus split and the dictionary (default 0)"
    )
    args = p.parse_args(argv)
    if args.top_n is None and args.fraction is None:
        args.fraction = 0.5  # default coverage knob: half of the word-like ids
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        s = build_english_clone(
            args.corpus,
            args.tokenizer,
            args.out,
            clone_fraction=args.clone_fraction,
            top_n=args.top_n,
            fraction=args.fraction,
            heldout_fraction=args.heldout_fraction,
            seed=args.seed,
            text_field=args.text_field,
            fmt=args.fmt,
        )
    except (CorpusError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"English-Clone from {s['corpus']} -> {s['out']}")
    for lang, name in (("en", "en.jsonl.gz"), ("clone", "clone.jsonl.gz")):
        print(f"  {name:15s} {s['docs'][lang]:7d} docs {s['chars'][lang]:11d} chars")
    print(f"  clone share of characters: {s['clone_char_fraction']:.4f} (asked {args.clone_fraction})")
    print(f"  vocabulary: V={s['vocab_offset']}, model vocab 2V={s['vocab_size']}")
    print(
        f"  table/: {s['table_entries']} entries ({s['table_entries'] - s['table_heldout']} align, "
        f"{s['table_heldout']} heldout) of {s['table_candidates']} word-like ids, selection {s['selection']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
