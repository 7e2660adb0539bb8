"""Build packed, code-switched WebDataset shards (+ manifest.json) from corpora.

Usage (from the repository root):

    python data_tools/build_shards.py --out runs/shards --tokenizer runs/tok --table runs/clone/table \\
        --corpus en=runs/clone/en.jsonl.gz --corpus clone=runs/clone/clone.jsonl.gz --clone-langs clone \\
        --mixture en=0.9,clone=0.1 --p 0.05 --seq-len 256 --shard-multiple 4 --workers 2

    mpirun -np 4 python data_tools/build_shards.py ...     # multi-node: ranks split chunks and shards
    srun --mpi=pmix -n 4 python data_tools/build_shards.py ...   # (plain multi-task srun is refused)

A YAML file (`--config build.yaml`, keys of prealign_scale.data.build_config.BuildConfig) may hold the
build; flags given on the command line override it. Re-running the same command resumes a killed build.

Bad input (a setting, a file, a corpus line, a mixture or shard count the data cannot meet) stops the build
with exit code 2 and one line, `error: ...`, naming the field or `file:line`. After an error, fix the input
and run again: the folder is taken over and the tokenised chunks that are still valid are kept (a changed
mixture or layout re-plans without re-tokenising). Shard format and the rules: docs/formats.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prealign_scale.data.build_config import BuildConfig, BuildError, read_build_yaml
from prealign_scale.data.build_shards import build_shards

DEFAULTS = {f.name: f.default for f in dataclasses.fields(BuildConfig)}  # written once, in BuildConfig


def _kv(text: str, what: str) -> tuple[str, str]:
    if "=" not in text:
        raise BuildError(f"{what}: expected LANG=VALUE, got {text!r}")
    k, v = text.split("=", 1)
    return k.strip(), v.strip()


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (created; resumed if it holds this build)")
    p.add_argument("--config", help="YAML file with BuildConfig keys")
    p.add_argument("--corpus", action="append", default=[], metavar="LANG=PATH[,PATH...]")
    p.add_argument("--tokenizer")
    p.add_argument("--table", help="alignment table folder (no switching without one)")
    p.add_argument("--mixture", help="token-ratio weights, e.g. en=0.9,clone=0.1 (default: all documents)")
    p.add_argument("--p", type=float, help=f"switch probability per covered word (default {DEFAULTS['p']})")
    p.add_argument("--switch-langs", help="comma-separated languages to code-switch (default: the first)")
    p.add_argument("--clone-langs", help="comma-separated languages rendered as English-Clone")
    p.add_argument("--include-heldout", action="store_true", default=None,
                   help="also switch the table's held-out words")
    p.add_argument("--seed", type=int)
    p.add_argument("--seq-len", type=int, help=f"tokens per packed sample (default {DEFAULTS['seq_len']})")
    p.add_argument("--total-tokens", type=int)
    p.add_argument("--samples-per-shard", type=int)
    p.add_argument("--shard-multiple", type=int, help="shard count multiple (ranks x loader workers)")
    p.add_argument("--docs-per-chunk", type=int)
    p.add_argument("--text-field")
    p.add_argument("--corpus-format", choices=["lines", "paragraphs", "jsonl"])
    p.add_argument("--facts", help="knowledge facts JSONL to mix into the source-language documents")
    p.add_argument("--fact-templates", help="templates JSON {lang: {relation: [templates]}}")
    p.add_argument("--fact-repeats", type=int, help=f"statements of each fact (default {DEFAULTS['fact_repeats']})")
    p.add_argument("--facts-lang", help="language of the fact documents (default: the first switched one)")
    p.add_argument("--workers", type=int, default=1, help="worker processes per rank (default 1)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace what --out holds (the tokenised chunks of a build there are kept where their "
                        "inputs and settings are unchanged; delete --out/.work to redo them)")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def config_from_args(a: argparse.Namespace) -> BuildConfig:
    values: dict = {}
    if a.config:
        values = read_build_yaml(a.config)
    if a.corpus:
        corpora: dict[str, list[str]] = {}
        for spec in a.corpus:
            lang, paths = _kv(spec, "--corpus")
            corpora.setdefault(lang, []).extend(x for x in paths.split(",") if x)
        values["corpora"] = corpora
    if a.mixture:
        try:
            values["mixture"] = {k: float(v) for k, v in (_kv(x, "--mixture") for x in a.mixture.split(","))}
        except BuildError:
            raise
        except ValueError as exc:
            raise BuildError(f"--mixture: {exc}") from exc
    for name in ("switch_langs", "clone_langs"):
        if getattr(a, name) is not None:
            values[name] = [x for x in getattr(a, name).split(",") if x]
    for name in ("tokenizer", "table", "p", "seed", "seq_len", "total_tokens", "samples_per_shard",
                 "shard_multiple", "docs_per_chunk", "text_field", "corpus_format", "include_heldout",
                 "facts", "fact_templates", "fact_repeats", "facts_lang"):
        if getattr(a, name) is not None:
            values[name] = getattr(a, name)
    for need in ("corpora", "tokenizer"):
        if need not in values:
            raise BuildError(f"{need}: required (--{need.rstrip('a').replace('_', '-') if need == 'corpora' else need}"
                             " or in --config)")
    return BuildConfig(**values)


def main(argv=None) -> int:
    a = parse_args(argv)
    try:
        cfg = config_from_args(a)
        summary = build_shards(cfg, a.out, workers=a.workers, overwrite=a.overwrite, progress=not a.no_progress)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if summary is not None:
        print("\n".join(summary.lines()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
