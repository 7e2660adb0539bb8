"""The alignment probe at initialisation and right after phase 1 (issue 5 §2), for every phase 1 of a sweep.

    python launchers/probe_phase1.py configs/repro/english_clone.sweep.yaml --out-root runs/repro_phase1 \
        --text data/embedded/kjv_heldout.jsonl.gz --json docs/results/english_clone/probe_phase1.json [--end]
    python launchers/probe_phase1.py configs/repro/english_clone.sweep.yaml \
        --json docs/results/english_clone/probe_phase1.json --from-json      # only rewrite the markdown

Runs of the sweep whose phase 1 is the same (same model, phase-1 settings, seed, table and tokenizer: in the
reproduction the `init` and `prealign` arms of a size and seed) share one *setup*, named by the labels they
have in common (``3m_s1``). For each setup, one process at a time:

1. ``OUT_ROOT/<setup>/init``: the freshly initialised model (launchers/export_init.py: the engine's own init
   for that seed, exported without a training step);
2. ``OUT_ROOT/<setup>/phase1``: phase 1 only (launchers/pretrain.py --phase align; its training probe goes to
   its metrics.jsonl as in the sweep);
3. both probed by the evaluator (`prealign_scale.eval.run_eval.evaluate`, probe only): groups ``seen``,
   ``unseen`` and ``unseen-composed`` (the words of --text made of several seen tokens, probe.composed_pairs),
   at most --max-pairs pairs per group, seed 0; results in ``<folder>/eval/results.json``.

``--end`` also probes the sweep's finished runs (their ``hf/``; results in ``OUT_ROOT/end/<run>.json``,
the run folders are not touched). Finished steps are skipped, so a re-run resumes. The per-layer numbers go
to the --json file (small, committed) and the tables to the markdown file next to it (--markdown), which
`--from-json` rebuilds from the JSON alone.
"""
# The recipe lives in prealign_scale/launch/probe_phase1.py; this front door only parses the arguments.

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prealign_scale.launch.probe_phase1 import probe_phase1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("sweep")
    p.add_argument("--json", required=True, help="the small result JSON (committed)")
    p.add_argument("--markdown", help="tables (default: the JSON path with .md)")
    p.add_argument("--out-root", default="runs/repro_phase1", help="folders of the init / phase-1 models")
    p.add_argument("--text", default="data/embedded/kjv_heldout.jsonl.gz",
                   help="held-out English text for the unseen-composed group")
    p.add_argument("--max-pairs", type=int, default=2000, help="pairs per probe group (seeded subset)")
    p.add_argument("--end", action="store_true", help="also probe the sweep's finished runs")
    p.add_argument("--from-json", action="store_true", help="only rebuild the markdown from --json")
    a = p.parse_args(argv)
    out_json = Path(a.json)
    md = Path(a.markdown) if a.markdown else out_json.with_suffix(".md")
    print(probe_phase1(a.sweep, out_json, md, a.out_root, a.text, a.max_pairs, end=a.end, from_json=a.from_json))
    return 0


if __name__ == "__main__":
    sys.exit(main())
