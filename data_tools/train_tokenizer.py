"""Train the project's byte-level BPE tokenizer on one or more corpora.

Usage (from the repository root):

    python data_tools/train_tokenizer.py --corpus data/embedded/kjv_train.jsonl.gz --vocab-size 8192 \\
        --out runs/tok

The output folder loads with ``transformers.PreTrainedTokenizerFast.from_pretrained(DIR)``. Corpora are read
with prealign_scale.text.corpus (plain text or JSONL, optionally .gz / .zst); prints the vocabulary size, the
special token ids and the sha256 of tokenizer.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prealign_scale.text.corpus import FORMATS, CorpusError, check_corpus, iter_corpus_texts
from prealign_scale.text.tokenizer import DEFAULT_SPECIALS, tokenizer_sha256, train_bpe


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", nargs="+", required=True, metavar="PATH", help="corpus files (read in order)")
    p.add_argument("--text-field", default="text", help="JSONL field holding the text (default: text)")
    p.add_argument(
        "--format",
        dest="fmt",
        choices=FORMATS,
        default=None,
        help="corpus format for all files (default: from each file name)",
    )
    p.add_argument(
        "--vocab-size", type=int, default=8192, help="vocabulary size incl. specials (default 8192)"
    )
    p.add_argument(
        "--min-frequency", type=int, default=2, help="minimum pair frequency for a merge (default 2)"
    )
    p.add_argument("--bos", default=DEFAULT_SPECIALS["bos_token"], help="BOS token string")
    p.add_argument("--eos", default=DEFAULT_SPECIALS["eos_token"], help="EOS token string")
    p.add_argument("--pad", default=DEFAULT_SPECIALS["pad_token"], help="PAD token string")
    p.add_argument("--unk", default=DEFAULT_SPECIALS["unk_token"], help="UNK token string")
    p.add_argument("--max-docs", type=int, default=None, help="use at most this many documents in total")
    p.add_argument("--out", required=True, metavar="DIR", help="output tokenizer folder")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.max_docs is not None and args.max_docs <= 0:
        print(f"error: --max-docs must be positive, got {args.max_docs}", file=sys.stderr)
        return 2
    specials = {"bos_token": args.bos, "eos_token": args.eos, "pad_token": args.pad, "unk_token": args.unk}
    try:
        for path in args.corpus:  # every file readable and non-empty before any work starts
            check_corpus(path, text_field=args.text_field, fmt=args.fmt)
        texts = iter_corpus_texts(
            args.corpus, text_field=args.text_field, fmt=args.fmt, max_docs=args.max_docs
        )
        tok = train_bpe(
            texts, args.out, vocab_size=args.vocab_size, specials=specials, min_frequency=args.min_frequency
        )
    except (CorpusError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    ids = {name: tok.convert_tokens_to_ids(tok_str) for name, tok_str in specials.items()}
    print(f"tokenizer: {args.out}")
    print(f"vocab size: {len(tok)}")
    print(
        "special ids: " + ", ".join(f"{n.removesuffix('_token')}={specials[n]!r}:{i}" for n, i in ids.items())
    )
    print(f"tokenizer sha256: {tokenizer_sha256(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
