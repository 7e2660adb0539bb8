"""Collect a sweep's evaluations into tables, plots and small JSON files (docs/results/...).

    python launchers/sweep_report.py configs/repro/english_clone.sweep.yaml --out docs/results/english_clone

Writes OUT/runs/<run>.json (each run's eval results plus its probe records from metrics.jsonl, small
enough to commit), OUT/table.md (mean ± half-range over seeds per size and arm, from those JSON files, so
the table regenerates without re-training: `--from-json`, rows in the sweep's order, byte for byte; its
columns come from the results, for any language pair: `prealign_scale.eval.report.table_keys`),
OUT/probe_phases.md (the training probe at init, after phase 1, at the end), OUT/versus.md (--reference, default
prealign, against every other arm per size: each difference marked better / worse beyond the seed spread, ≈
within it), and PNG plots: the table as bars
per arm with each seed a dot and each accuracy's chance / majority as lines (summary_<size>.png), LM loss per
language and arm (loss_<size>.png), alignment cosine per layer over training (probe_<size>_<arm>.png; an
absent axis drops out of the name: loss.png, probe_<arm>.png). The evaluator's probe at init and after phase 1 (with the
unseen-composed group) is launchers/probe_phase1.py's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prealign_scale.eval.report import (
    compare_markdown,
    plot_arm_summary,
    plot_loss_curves,
    plot_probe_over_training,
    table_keys,
    versus_markdown,
)
from prealign_scale.launch.sweep import expand_sweep, load_sweep
from prealign_scale.launch.sweep_local import run_dir_of


def plot_name(*parts: str | None) -> str:
    """A plot's file name from its non-empty parts: ``loss_3m.png``, or ``loss.png`` without a size axis."""
    return "_".join(p for p in parts if p) + ".png"


def probe_records(metrics: Path) -> list[dict]:
    if not metrics.is_file():
        return []
    return [r for r in map(json.loads, metrics.read_text().splitlines()) if r.get("kind") == "probe"]


def collect(sweep_path: str, out: Path) -> list[dict]:
    """Copy each evaluated run's results (+ probe records) to OUT/runs/<name>.json; return them."""
    rows = []
    (out / "runs").mkdir(parents=True, exist_ok=True)
    for spec in expand_sweep(load_sweep(sweep_path)):
        run = run_dir_of(spec)
        res = run / "eval" / "results.json"
        if not res.is_file():
            print(f"[report] {spec.name}: not evaluated yet, left out")
            continue
        record = {"name": spec.name, "labels": dict(spec.labels), "overrides": list(spec.overrides),
                  "results": json.loads(res.read_text()), "probe_over_training": probe_records(run / "metrics.jsonl")}
        (out / "runs" / f"{spec.name}.json").write_text(json.dumps(record, indent=1) + "\n")
        rows.append(record)
    return rows


def from_json(sweep_path: str, out: Path) -> list[dict]:
    """The committed OUT/runs/*.json, in the sweep's expansion order (the order `collect` writes the tables
    in, so a regenerated table.md / probe_phases.md equals the committed one); files of runs the sweep does
    not name come last, by name."""
    order = {spec.name: i for i, spec in enumerate(expand_sweep(load_sweep(sweep_path)))}
    rows = [json.loads(p.read_text()) for p in (out / "runs").glob("*.json")]
    return sorted(rows, key=lambda r: (order.get(r["name"], len(order)), r["name"]))


def _best(rec: dict, group: str, stat: str = "acc") -> str:
    v = rec.get(f"probe_{group}_{stat}")
    return "–" if not v else f"{max(x for x in v if x is not None):.3f}"


def probe_phase_table(rows: list[dict]) -> str:
    """Seen / unseen retrieval (best layer) at init, after phase 1 and at the end of training, per run."""
    lines = ["| run | init seen | init unseen | after phase 1 seen | after phase 1 unseen | end seen | end unseen |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        recs = r["probe_over_training"]
        if not recs:
            continue
        init = recs[0]
        aligned = [x for x in recs if x["phase"] == "align"]
        after1 = aligned[-1] if aligned and aligned[-1]["step"] > 0 else None
        end = recs[-1]
        cells = [_best(init, "seen"), _best(init, "unseen")]
        cells += [_best(after1, "seen"), _best(after1, "unseen")] if after1 else ["–", "–"]
        cells += [_best(end, "seen"), _best(end, "unseen")]
        lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep")
    p.add_argument("--out", required=True)
    p.add_argument("--from-json", action="store_true", help="rebuild the tables from OUT/runs/*.json only")
    p.add_argument("--reference", default="prealign",
                   help="arm that versus.md compares with every other arm, per size (default prealign; "
                        "skipped when the sweep has no such arm)")
    a = p.parse_args(argv)
    out = Path(a.out)
    rows = from_json(a.sweep, out) if a.from_json else collect(a.sweep, out)
    if not rows:
        print("error: no evaluated run", file=sys.stderr)
        return 2
    groups: dict[str, list[dict]] = {}
    by_size: dict[str | None, dict[str, list[dict]]] = {}  # size -> arm -> results (for the summary plots)
    for r in rows:
        labels = r["labels"]
        groups.setdefault(f"{labels.get('size', '')} {labels.get('arm', '')}".strip(), []).append(r["results"])
        by_size.setdefault(labels.get("size"), {}).setdefault(labels.get("arm") or r["name"], []).append(r["results"])
    keys = table_keys([r["results"] for r in rows])
    (out / "table.md").write_text(compare_markdown(groups, keys))
    (out / "probe_phases.md").write_text(probe_phase_table(rows))
    # the table as bars per size / versus the reference (knowledge baselines: lines in the plots, not compared)
    plot_keys = [k for k in keys if not k.endswith((" majority", " subject-blind"))]
    for size, arms in by_size.items():
        plot_arm_summary(arms, plot_keys, out / plot_name("summary", size),
                         title=f"{size or ''} arms: bars = mean over seeds, dots = runs".strip())
    versus = [f"## {size or 'all runs'}\n\n" + versus_markdown(arms, a.reference, plot_keys)
              for size, arms in by_size.items() if a.reference in arms and len(arms) > 1]
    if versus:
        (out / "versus.md").write_text(
            f"# {a.reference} against every other arm (better / worse: beyond the seed spread, the difference of "
            f"the means exceeding the sum of the half-ranges; ≈ within it)\n\n" + "\n".join(versus))
    print((out / "table.md").read_text())
    if not a.from_json:  # plots need the run folders' metrics.jsonl
        specs = {s.name: s for s in expand_sweep(load_sweep(a.sweep))}
        sizes = sorted({r["labels"].get("size") for r in rows})
        for size in sizes:
            first_seed = {}
            for r in rows:
                if r["labels"].get("size") == size:
                    first_seed.setdefault(r["labels"].get("arm"), run_dir_of(specs[r["name"]]) / "metrics.jsonl")
            plot_loss_curves(first_seed, out / plot_name("loss", size), phase="lm")
            for arm, metrics in first_seed.items():
                if probe_records(metrics):
                    plot_probe_over_training(metrics, out / plot_name("probe", size, arm))
    print(f"[report] {len(rows)} runs -> {out}/ (table.md, probe_phases.md, summary*.png, runs/*.json, *.png)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
