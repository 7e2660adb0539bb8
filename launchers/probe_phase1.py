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

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]
GROUPS = ("seen", "unseen", "unseen-composed")
STAGES = {"init": "init", "phase1": "after phase 1"}  # stage key -> column title


# ------------------------------------------------------------------------------------------------ setups

def phase1_setups(sweep_path: str) -> list[dict]:
    """``[{"name", "runs", "config", "overrides", "align_steps"}]``: the sweep's distinct phases 1, in sweep
    order. Two runs share one when their resolved model, align section, seed, table and tokenizer agree."""
    from prealign_scale.engine.resolve_config import load_config
    from prealign_scale.sweep import expand_sweep, load_sweep

    setups: dict[str, dict] = {}
    labels_of: dict[str, list[dict]] = {}
    for spec in expand_sweep(load_sweep(sweep_path)):
        cfg = load_config(spec.config, list(spec.overrides))
        if cfg.align.steps <= 0:
            continue
        key = json.dumps({"model": dataclasses.asdict(cfg.model), "align": dataclasses.asdict(cfg.align),
                          "seed": cfg.run.seed, "table": cfg.data.table_dir, "tok": cfg.data.tokenizer_dir},
                         sort_keys=True)
        if key not in setups:
            setups[key] = {"runs": [], "config": spec.config, "overrides": list(spec.overrides),
                           "align_steps": cfg.align.steps}
            labels_of[key] = []
        setups[key]["runs"].append(spec.name)
        labels_of[key].append(dict(spec.labels))
    out = []
    for key, s in setups.items():
        first = labels_of[key][0]
        common = [v for a, v in first.items() if all(lab.get(a) == v for lab in labels_of[key])]
        out.append({"name": "_".join(common) or s["runs"][0], **s})
    return out


# ------------------------------------------------------------------------------------------------ running

def _run(cmd: list[str], log: Path) -> None:
    from prealign_scale.sweep_local import _env

    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"[phase1] {' '.join(cmd)}  (log {log})", flush=True)
    with open(log, "a") as f:
        rc = subprocess.run(cmd, cwd=ROOT, env=_env(), stdout=f, stderr=subprocess.STDOUT, check=False).returncode
    if rc != 0:
        raise RuntimeError(f"{cmd[1]} exited {rc}; see {log}")


def train_setup(setup: dict, folder: Path) -> None:
    """OUT_ROOT/<setup>/init (exported initial model) and /phase1 (phase 1 only), unless already there."""
    base = [sys.executable]
    init, phase1 = folder / "init", folder / "phase1"
    if not (init / "hf" / "config.json").is_file():
        _run(base + [str(ROOT / "launchers/export_init.py"), "--config", setup["config"], *setup["overrides"],
                     f"run.out_dir={init}"], folder / "init.log")
    if not (phase1 / "DONE").is_file():
        _run(base + [str(ROOT / "launchers/pretrain.py"), "--config", setup["config"], *setup["overrides"],
                     f"run.out_dir={phase1}", "--phase", "align"], folder / "phase1.log")


def probe_folder(model_dir: Path, out_json: Path, text: str, max_pairs: int) -> dict:
    """The evaluator's probe (seen, unseen, unseen-composed) of a run / HF folder, cached in `out_json`."""
    if out_json.is_file():
        return json.loads(out_json.read_text())
    from prealign_scale.eval.report import write_results
    from prealign_scale.eval.run_eval import EvalConfig, evaluate

    print(f"[phase1] probing {model_dir}", flush=True)
    res = evaluate(model_dir, EvalConfig(probe_composed_text=text, probe_max_pairs=max_pairs, seed=0))
    write_results(res, out_json)
    return res


def summary(res: dict) -> dict:
    """The small committed form of a probe result: per group, its size and per-layer numbers (4 digits)."""
    probe = res["probe"]
    groups = {}
    for g in GROUPS:
        d = probe["groups"][g]
        groups[g] = {"pairs": d["pairs"], "candidates": d["candidates"], "chance": round(d["chance"], 6),
                     **{s: [None if v is None else round(v, 4) for v in d[s]]
                        for s in ("acc", "cos_true", "cos_random")}}
    return {"layers": probe["layers"], "groups": groups}


def dump_json(data: dict) -> str:
    """Indented JSON with every list of plain values on one line (one line per group and statistic)."""
    text = json.dumps(data, indent=1)
    return re.sub(r"\[\s+([^\[\]{}]*?)\s+\]", lambda m: "[" + re.sub(r"\s*\n\s*", " ", m.group(1)) + "]", text) + "\n"


# ------------------------------------------------------------------------------------------------ tables

def _best(group: dict, layers: list[str]) -> str:
    acc = group["acc"]
    k = max(range(len(acc)), key=lambda i: acc[i])  # the first layer on ties
    return f"{acc[k]:.3f} ({layers[k]})"


def markdown(data: dict) -> str:
    """Best-layer table (init, after phase 1, [end]) and per-layer tables of every group, from the JSON."""
    first = data["setups"][0]["stages"]["init"]
    sizes = ", ".join(f"{g} {first['groups'][g]['candidates']} words (chance {first['groups'][g]['chance']:.4f})"
                      for g in GROUPS)
    intro = ("Alignment probe at initialisation and right after phase 1 (launchers/probe_phase1.py): translation "
             "retrieval acc@1 at the best layer (in parentheses).\n"
             f"Groups: {sizes}; `unseen-composed` words from `{data['text']}`.\n")
    parts = [intro]
    head = ["phase 1 of", "stage", *GROUPS]
    rows = []
    for s in data["setups"]:
        for stage, title in STAGES.items():
            r = s["stages"][stage]
            rows.append([f"{s['name']} ({', '.join(s['runs'])})", title,
                         *[_best(r["groups"][g], r["layers"]) for g in GROUPS]])
    parts.append(_table(head, rows))
    if data.get("end"):
        rows = [[e["name"], *[_best(e["groups"][g], e["layers"]) for g in GROUPS]] for e in data["end"]]
        parts.append("At the end of training (the sweep's runs, the same probe):\n\n" + _table(["run", *GROUPS], rows))
    for g in GROUPS:
        cols = [(s, stage) for s in data["setups"] for stage in STAGES]
        layers = data["setups"][0]["stages"]["init"]["layers"]
        rows = []
        for k, layer in enumerate(layers):
            rows.append([layer, *[_num(s["stages"][stage]["groups"][g]["acc"], k) for s, stage in cols]])
        parts.append(f"Per layer, `{g}` acc@1:\n\n"
                     + _table(["layer", *[f"{s['name']} {STAGES[stage]}" for s, stage in cols]], rows))
    return "\n".join(parts)


def _num(values: list, k: int) -> str:
    return "–" if k >= len(values) or values[k] is None else f"{values[k]:.3f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


# ------------------------------------------------------------------------------------------------ main

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
    if not a.from_json:
        from prealign_scale.sweep import expand_sweep, load_sweep
        from prealign_scale.sweep_local import run_dir_of

        root = Path(a.out_root)
        data: dict = {"sweep": a.sweep, "text": a.text, "max_pairs": a.max_pairs, "seed": 0, "setups": []}
        for s in phase1_setups(a.sweep):
            train_setup(s, root / s["name"])
            stages = {stage: summary(probe_folder(root / s["name"] / stage, root / s["name"] / stage / "eval" /
                                                  "results.json", a.text, a.max_pairs)) for stage in STAGES}
            data["setups"].append({"name": s["name"], "runs": s["runs"], "align_steps": s["align_steps"],
                                   "folder": str(root / s["name"]), "stages": stages})
        if a.end:
            data["end"] = []
            for spec in expand_sweep(load_sweep(a.sweep)):
                run = run_dir_of(spec)
                if not (run / "hf" / "config.json").is_file():
                    print(f"[phase1] {spec.name}: no hf/ export, left out of --end", flush=True)
                    continue
                res = probe_folder(run, root / "end" / f"{spec.name}.json", a.text, a.max_pairs)
                data["end"].append({"name": spec.name, **summary(res)})
        out_json.parent.mkdir(parents=True, exist_ok=True)
        out_json.write_text(dump_json(data))
    data = json.loads(out_json.read_text())
    md.write_text(markdown(data))
    print(md.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
