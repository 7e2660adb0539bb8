"""The phase-1 alignment probe recipe (launchers/probe_phase1.py, issue 5 §2): for every distinct phase 1 of a
sweep, export the initial model, train phase 1 only, probe both with the evaluator; optionally probe the sweep's
finished runs; write the per-layer numbers (JSON) and their tables (markdown).

A multi-step recipe of the launch layer: it starts the real launchers (export_init.py, pretrain.py) as
processes, one at a time, and calls the evaluator in-process. Finished steps are skipped, so a re-run resumes.
Setups: runs of the sweep whose resolved model, phase-1 settings, seed, table and tokenizer agree share one,
named by the labels they have in common (``3m_s1``); see the launcher's help for the folders and groups.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

from prealign_scale.engine.run_folder import run_is_finished
from prealign_scale.launch.sweep import expand_sweep, load_sweep
from prealign_scale.launch.sweep_local import launch_env, run_dir_of

ROOT = Path(__file__).resolve().parents[2]  # the checkout: launchers/ are started from here
GROUPS = ("seen", "unseen", "unseen-composed")
STAGES = {"init": "init", "phase1": "after phase 1"}  # stage key -> column title


# ------------------------------------------------------------------------------------------------ setups

def phase1_setups(sweep_path: str) -> list[dict]:
    """``[{"name", "runs", "config", "overrides", "align_steps"}]``: the sweep's distinct phases 1, in sweep
    order. Two runs share one when their resolved model, align section, seed, table and tokenizer agree."""
    from prealign_scale.engine.resolve_config import load_config

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

def run_step(cmd: list[str], log: Path) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"[phase1] {' '.join(cmd)}  (log {log})", flush=True)
    with open(log, "a") as f:
        rc = subprocess.run(cmd, cwd=ROOT, env=launch_env(), stdout=f, stderr=subprocess.STDOUT, check=False).returncode
    if rc != 0:
        raise RuntimeError(f"{cmd[1]} exited {rc}; see {log}")


def train_setup(setup: dict, folder: Path) -> None:
    """OUT_ROOT/<setup>/init (exported initial model) and /phase1 (phase 1 only), unless already there."""
    base = [sys.executable]
    init, phase1 = folder / "init", folder / "phase1"
    if not (init / "hf" / "config.json").is_file():
        run_step(base + [str(ROOT / "launchers/export_init.py"), "--config", setup["config"], *setup["overrides"],
                     f"run.out_dir={init}"], folder / "init.log")
    if not run_is_finished(phase1):
        run_step(base + [str(ROOT / "launchers/pretrain.py"), "--config", setup["config"], *setup["overrides"],
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


# ------------------------------------------------------------------------------------------------ the recipe

def probe_phase1(sweep: str, out_json: Path, md: Path, out_root: str, text: str, max_pairs: int,
                 end: bool = False, from_json: bool = False) -> str:
    """Run (or resume) the recipe and write `out_json` and `md`; `from_json` only rebuilds `md` from the JSON.
    Returns the markdown."""
    if not from_json:
        root = Path(out_root)
        data: dict = {"sweep": sweep, "text": text, "max_pairs": max_pairs, "seed": 0, "setups": []}
        for s in phase1_setups(sweep):
            train_setup(s, root / s["name"])
            stages = {stage: summary(probe_folder(root / s["name"] / stage, root / s["name"] / stage / "eval" /
                                                  "results.json", text, max_pairs)) for stage in STAGES}
            data["setups"].append({"name": s["name"], "runs": s["runs"], "align_steps": s["align_steps"],
                                   "folder": str(root / s["name"]), "stages": stages})
        if end:
            data["end"] = []
            for spec in expand_sweep(load_sweep(sweep)):
                run = run_dir_of(spec)
                if not (run / "hf" / "config.json").is_file():
                    print(f"[phase1] {spec.name}: no hf/ export, left out of --end", flush=True)
                    continue
                res = probe_folder(run, root / "end" / f"{spec.name}.json", text, max_pairs)
                data["end"].append({"name": spec.name, **summary(res)})
        out_json.parent.mkdir(parents=True, exist_ok=True)
        out_json.write_text(dump_json(data))
    data = json.loads(out_json.read_text())
    md.write_text(markdown(data))
    return md.read_text()
