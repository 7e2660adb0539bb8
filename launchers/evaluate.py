"""Evaluate a trained model: language modelling, alignment probe, sentence retrieval, knowledge, transfer.

    python launchers/evaluate.py RUN_DIR [--hf DIR] [--config eval.yaml] [--shipped-sets]
        [--lm-shards DIR] [--probe-table DIR] [--probe-pairs TSV:SRC:TGT] [--probe-composed TEXT]
        [--facts F --templates T] [--out results.json] [--markdown results.md]

RUN_DIR is a run folder (its hf/ export is evaluated; its config.yaml names the alignment table) or an HF
model folder. Every section runs when its inputs are given: --config (YAML of EvalConfig keys, see
prealign_scale/eval/run_eval.py and docs/evaluation.md) and flags (flags win). --shipped-sets adds the sets
of data/eval (facts, genre transfer task, parallel sentences; English-Clone targets for a Clone model).
Writes the results JSON (default RUN_DIR/eval/results.json), a markdown table next to it (results.md) and,
when the probe or sentence retrieval ran, a per-layer plot (results.probe_layers.png).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("run_dir", help="run folder (with hf/) or HF model folder")
    p.add_argument("--hf", help="HF model folder (default RUN_DIR/hf)")
    p.add_argument("--config", help="YAML file of eval config keys")
    p.add_argument("--shipped-sets", action="store_true", help="use data/eval's facts, transfer and parallel sets")
    p.add_argument("--tokenizer", help="tokenizer folder (default: the HF folder)")
    p.add_argument("--clone-offset", type=int, help="V of an English-Clone model (0: none; default: detect)")
    p.add_argument("--lm-shards", help="held-out shard folder for per-language loss / perplexity")
    p.add_argument("--lm-text", action="append", default=[], metavar="LANG=FILE", help="text file per language")
    p.add_argument("--probe-table", help="alignment table folder (default: the run's data.table_dir)")
    p.add_argument("--probe-pairs", action="append", default=[], metavar="TSV:SRC_LANG:TGT_LANG",
                   help="extra word-pair TSV for the probe")
    p.add_argument("--probe-composed", metavar="TEXT",
                   help="held-out source-language text: its words made of several seen tokens form the probe "
                        "group unseen-composed (English-Clone)")
    p.add_argument("--facts", help="facts JSONL")
    p.add_argument("--templates", help="fact templates JSON")
    p.add_argument("--no-finetune", action="store_true", help="transfer: linear probe only")
    p.add_argument("--device", help="cpu, cuda, ...")
    p.add_argument("--out", help="results JSON (default RUN_DIR/eval/results.json)")
    p.add_argument("--markdown", help="markdown table (default: the results path with .md)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from prealign_scale.eval.io import EvalInputError
    from prealign_scale.eval.report import markdown_report, plot_probe_layers, write_results
    from prealign_scale.eval.run_eval import EvalConfig, evaluate

    try:
        cfg = EvalConfig.load(args.config) if args.config else EvalConfig()
        flags = {"hf_dir": args.hf, "tokenizer_dir": args.tokenizer, "clone_offset": args.clone_offset,
                 "lm_shards": args.lm_shards, "probe_table": args.probe_table, "facts": args.facts,
                 "templates": args.templates, "device": args.device, "probe_composed_text": args.probe_composed}
        for key, value in flags.items():
            if value is not None:
                setattr(cfg, key, value)
        for item in args.lm_text:
            lang, sep, path = item.partition("=")
            if not sep:
                raise ValueError(f"--lm-text {item!r}: expected LANG=FILE")
            cfg.lm_texts[lang] = path
        for item in args.probe_pairs:
            parts = item.rsplit(":", 2)
            if len(parts) != 3:
                raise ValueError(f"--probe-pairs {item!r}: expected TSV:SRC_LANG:TGT_LANG")
            cfg.probe_pairs.append({"path": parts[0], "src_lang": parts[1], "tgt_lang": parts[2]})
        if args.no_finetune:
            cfg.transfer_finetune = False
        if args.shipped_sets:
            cfg.shipped_sets = True
        results = evaluate(args.run_dir, cfg)
    except (EvalInputError, ValueError, FileNotFoundError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path(args.run_dir) / "eval" / "results.json"
    write_results(results, out)
    md = Path(args.markdown) if args.markdown else out.with_suffix(".md")
    md.write_text(markdown_report(results, title=f"Evaluation of {args.run_dir}"))
    png = plot_probe_layers(results, out.with_name(out.stem + ".probe_layers.png"))
    print(md.read_text())
    print(f"results: {out}  table: {md}" + (f"  plot: {png}" if png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
