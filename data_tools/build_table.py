"""Build an alignment table (entries.jsonl + meta.json) from dictionary files under a tokenizer.

    python data_tools/build_table.py --dict dicts/en-de.tsv --tokenizer runs/tok --out runs/table \\
        --source-lang en --target-lang de --coverage-corpus data/embedded/kjv_train.jsonl.gz

Formats (docs/dictionaries.md): TSV/MUSE (.tsv, .txt), JSONL pairs or multi-entries (.jsonl), FreeDict/dictd
(.index next to .dict or .dict.dz). Bad lines are printed as ``path:line: message`` and counted; --strict
makes the first one an error. Exit code 2 on any error (missing file, empty result, strict problem).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python data_tools/build_table.py` without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prealign_scale.alignment.build_table import build_alignment_table
from prealign_scale.alignment.coverage import coverage_report
from prealign_scale.alignment.dictionaries import FORMATS, DictionaryError, read_dictionaries
from prealign_scale.text.corpus import iter_corpus_texts
from prealign_scale.text.tokenizer import load_tokenizer, tokenizer_sha256


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dict", dest="dicts", action="append", required=True, metavar="PATH",
                   help="dictionary file (repeatable); for dictd give the .index file")
    p.add_argument("--format", choices=FORMATS, default=None, help="override the format implied by the extension")
    p.add_argument("--tokenizer", required=True, metavar="DIR", help="tokenizer folder (tokenizer.json)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder for entries.jsonl + meta.json")
    p.add_argument("--heldout-fraction", type=float, default=0.1, help="share of entries held out (default 0.1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the align/heldout split (default 0)")
    p.add_argument("--source-lang", default="src", help="language tag of source words (default src)")
    p.add_argument("--target-lang", default="tgt", help="language tag of target words (default tgt)")
    p.add_argument("--coverage-corpus", metavar="PATH", default=None,
                   help="corpus sample: .txt (one document per line) or .jsonl with a 'text' field, optionally .gz/.zst")
    p.add_argument("--coverage-docs", type=int, default=1000, metavar="N",
                   help="documents of the coverage corpus to read (default 1000)")
    p.add_argument("--strict", action="store_true", help="stop at the first bad input line")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if Path(args.out).exists() and not Path(args.out).is_dir():  # before any work
        print(f"error: {args.out}: is a file, not a folder (--out names the table folder)", file=sys.stderr)
        return 2
    try:
        result = read_dictionaries(args.dicts, args.format, args.strict, args.source_lang, args.target_lang)
        for problem in result.problems:
            print(problem)
        tokenizer = load_tokenizer(args.tokenizer)
        table = build_alignment_table(
            result.entries,
            tokenizer,
            heldout_fraction=args.heldout_fraction,
            seed=args.seed,
            source_lang=args.source_lang,
            tokenizer_sha256=tokenizer_sha256(args.tokenizer),
            dictionary_sha256=result.sha256,
            problems=len(result.problems),
        )
        coverage = None
        if args.coverage_corpus:  # measured on the table's own (cleaned) source words
            texts = iter_corpus_texts([args.coverage_corpus], max_docs=args.coverage_docs)
            coverage = table.meta["coverage"] = coverage_report(table, tokenizer, texts, args.source_lang)
        table.save(args.out)
    except (DictionaryError, FileNotFoundError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    c = table.meta["counts"]
    print(f"read {len(args.dicts)} file(s): {c['raw_entries']} raw entries, {len(result.problems)} bad lines, "
          f"{result.skipped} skipped records")
    print(f"table {args.out}: {c['entries']} entries ({c['align']} align, {c['heldout']} heldout), "
          f"{c['words']} words; {c['merged']} merged, {c['dropped']} dropped, {c['duplicate_words']} duplicate words")
    print(f"split: {c['groups']} groups of entries sharing a word, {c['heldout_groups']} held out whole")
    if coverage is not None:
        print(f"coverage of {coverage['docs']} docs: {100 * coverage['word_coverage']:.2f}% of "
              f"{coverage['words']} words, {100 * coverage['token_coverage']:.2f}% of {coverage['tokens']} tokens "
              f"switchable (align part); held out {100 * coverage['heldout_word_coverage']:.2f}% of words, "
              f"{100 * coverage['heldout_token_coverage']:.2f}% of tokens")
        for lang, share in coverage["by_lang"].items():
            print(f"  into {lang}: switchable {100 * share['word_coverage']:.2f}% of words, "
                  f"held out {100 * share['heldout_word_coverage']:.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
