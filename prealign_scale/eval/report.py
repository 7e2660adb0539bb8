"""Results as files people read: the results JSON, markdown tables, and PNG plots from metrics.jsonl.

- :func:`write_results` / :func:`markdown_report`: one evaluation (`prealign_scale.eval.run_eval.evaluate`).
- :func:`headline` / :func:`compare_markdown`: the main numbers of several runs (arms x seeds) side by side,
  ``mean ± half-range`` over the seeds of an arm.
- :func:`plot_probe_layers`: one evaluation's probe (and sentence retrieval) per layer.
- :func:`plot_loss_curves`: per-language LM loss (``loss_<lang>`` fields of phase ``lm`` records) over steps,
  one line per arm. :func:`plot_probe_over_training`: alignment probe fields (``probe_<group>_<stat>``, per
  layer lists, see `prealign_scale.alignment.probe.probe_metrics`) over training, one line per layer.
- :func:`versus_markdown`: one arm (PreAlign) against each other arm, each difference marked better / worse
  when it exceeds the seed spread, ≈ when it does not.
- :func:`baselines` / :func:`plot_arm_summary`: every accuracy's chance and majority baselines, and the
  comparison table as bars per arm with each seed a dot and the baselines as lines.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prealign_scale.eval.io import read_jsonl


def _clean(x: Any) -> Any:
    """JSON-safe copy: NaN / inf -> None, tuples -> lists."""
    if isinstance(x, float):
        return None if math.isnan(x) or math.isinf(x) else x
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def write_results(results: dict, path: str | Path) -> Path:
    """Write the results JSON (NaN written as null), via a temporary file."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(_clean(results), indent=2, ensure_ascii=False) + "\n")
    tmp.replace(p)
    return p


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if math.isnan(v):
            return "–"
        return f"{v:.{digits}f}" if abs(v) < 1e4 else f"{v:.3g}"
    return str(v)


def headline(results: dict) -> dict[str, float | None]:
    """The main numbers of one evaluation, as flat ``name -> value`` (the columns of the comparison table)."""
    out: dict[str, float | None] = {}
    for name, lm in results.get("lm", {}).items():
        for lang, stats in lm.items():
            if isinstance(stats, dict) and "ppl" in stats:
                out[f"ppl {name}/{lang}" if name != "shards" else f"ppl {lang}"] = stats["ppl"]
    probe = results.get("probe")
    if probe:
        for group, g in probe["groups"].items():
            out[f"align acc {group} (final_norm)"] = g["acc"][-2]
            out[f"align acc {group} (best layer)"] = max(g["acc"])
            out[f"cos {group} true-random (final_norm)"] = (
                g["cos_true"][-2] - g["cos_random"][-2] if g["cos_random"][-2] is not None else None)
    for name, r in results.get("retrieval", {}).items():
        out[f"retrieval {name} (best layer)"] = max(r["acc"])
    for lang, k in results.get("knowledge", {}).items():
        out[f"knowledge {lang}"] = k["accuracy"]
        for base in ("majority", "subject_blind"):  # the baselines beside it (results before them lack them)
            if base in k:
                out[f"knowledge {lang} {base.replace('_', '-')}"] = k[base]
    t = results.get("transfer")
    if t:
        lp = t["linear_probe"]
        out[f"transfer probe {t['train_lang']}"] = lp["source"]
        for lang, a in lp["target"].items():
            out[f"transfer probe {lang}"] = a
        if "finetune" in t:
            out[f"transfer finetune {t['train_lang']}"] = t["finetune"]["source"]
            for lang, a in t["finetune"]["target"].items():
                out[f"transfer finetune {lang}"] = a
    return out


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def markdown_report(results: dict, title: str = "Evaluation") -> str:
    """A readable markdown page: the headline numbers, then the per-layer probe and retrieval tables."""
    parts = [f"# {title}\n"]
    if results.get("model"):
        parts.append(f"Model: `{results['model']}`\n")
    parts.append(_table(["metric", "value"], [[k, _fmt(v)] for k, v in headline(results).items()]))
    probe = results.get("probe")
    if probe:
        groups = list(probe["groups"])
        header = ["layer"] + [f"{g} {s}" for g in groups for s in ("acc@1", "cos true", "cos random")]
        rows = []
        for k, layer in enumerate(probe["layers"]):
            row = [layer]
            for g in groups:
                d = probe["groups"][g]
                row += [_fmt(d["acc"][k]), _fmt(d["cos_true"][k]), _fmt(d["cos_random"][k])]
            rows.append(row)
        chance = ", ".join(f"{g}: {_fmt(probe['groups'][g]['chance'], 4)}" for g in groups)
        parts.append(f"## Alignment probe per layer (chance {chance})\n\n" + _table(header, rows))
    for name, r in results.get("retrieval", {}).items():
        rows = [[layer, _fmt(r["acc_src2tgt"][k]), _fmt(r["acc_tgt2src"][k]), _fmt(r["cos_true"][k])]
                for k, layer in enumerate(r["layers"])]
        parts.append(f"## Sentence retrieval `{name}` ({r['src_lang']} → {r['tgt_lang']}, chance "
                     f"{_fmt(r['chance'], 4)})\n\n" + _table(["layer", "acc src→tgt", "acc tgt→src", "cos true"],
                                                             rows))
    knowledge = results.get("knowledge") or {}
    if knowledge:
        rows = [[lang, _fmt(k["accuracy"]), _fmt(k.get("chance")), _fmt(k.get("majority")),
                 _fmt(k.get("subject_blind")), _fmt(k.get("queries"))] for lang, k in knowledge.items()]
        parts.append("## Knowledge (accuracy beside its baselines: chance = 1 / candidates, majority = always the "
                     "relation's most frequent object, subject-blind = the model's choice without the subject)\n\n"
                     + _table(["lang", "accuracy", "chance", "majority", "subject-blind", "queries"], rows))
    t = results.get("transfer")
    if t:
        lp = t["linear_probe"]
        langs = list(lp["acc"])
        rows = [[layer] + [_fmt(lp["acc"][lang][k]) for lang in langs] for k, layer in enumerate(lp["layers"])]
        parts.append(f"## Transfer: linear probe accuracy per layer (trained on {t['train_lang']})\n\n"
                     + _table(["layer"] + langs, rows))
    return "\n".join(parts)


def source_lang(results: dict) -> str:
    """The source (training) language of an evaluation: the transfer task's, else the config's, else "en"."""
    t = results.get("transfer") or {}
    return t.get("train_lang") or (results.get("config") or {}).get("transfer_train_lang") or "en"


def table_keys(runs: Sequence[dict]) -> list[str]:
    """The comparison table's columns for these evaluations, taken from their results (any language pair).

    Languages are those of the held-out perplexity, the knowledge probe and the transfer tests, in order of
    first appearance, each target language before the source language (:func:`source_lang`). Columns, in
    order: ``ppl`` per language; seen / unseen / ... retrieval of the probe (best layer), then its cosine gap
    (final_norm), per group; ``knowledge`` per language, each followed by its majority and subject-blind
    baselines; ``transfer probe`` of the source then each target, ``transfer finetune`` per target;
    ``retrieval`` of each sentence-retrieval set (best layer). A column that no run has is left out.
    """
    heads = [headline(r) for r in runs]
    have = {k for h in heads for k in h}
    src = next((source_lang(r) for r in runs), "en")
    langs: list[str] = []
    groups: list[str] = []
    sets: list[str] = []
    for r in runs:
        langs += [lang for lang, v in ((r.get("lm") or {}).get("shards") or {}).items()
                  if isinstance(v, dict) and lang != "all"]
        langs += list(r.get("knowledge") or {})
        t = r.get("transfer") or {}
        langs += list((t.get("linear_probe") or {}).get("target") or {})
        groups += list((r.get("probe") or {}).get("groups") or {})
        sets += list(r.get("retrieval") or {})
    langs, groups, sets = (list(dict.fromkeys(x)) for x in (langs, groups, sets))
    tgts = [lang for lang in langs if lang != src]
    keys = [f"ppl {lang}" for lang in [*tgts, src]]
    keys += [f"align acc {g} (best layer)" for g in groups]
    keys += [f"cos {g} true-random (final_norm)" for g in groups]
    keys += [f"knowledge {lang}{base}" for lang in [*tgts, src] for base in ("", " majority", " subject-blind")]
    keys += [f"transfer probe {lang}" for lang in [src, *tgts]] + [f"transfer finetune {lang}" for lang in tgts]
    keys += [f"retrieval {name} (best layer)" for name in sets]
    return [k for k in keys if k in have]


def _mean_half_range(vals: Sequence[float]) -> tuple[float, float]:
    return sum(vals) / len(vals), (max(vals) - min(vals)) / 2


def compare_markdown(runs: dict[str, list[dict]], keys: Sequence[str] | None = None) -> str:
    """One row per arm: ``mean ± half-range`` over its runs (seeds) of each headline number."""
    heads = {arm: [headline(r) for r in rs] for arm, rs in runs.items()}
    if keys is None:
        keys = list(dict.fromkeys(k for hs in heads.values() for h in hs for k in h))
    rows = []
    for arm, hs in heads.items():
        row = [f"{arm} (n={len(hs)})"]
        for k in keys:
            vals = [h[k] for h in hs if h.get(k) is not None and not math.isnan(h[k])]
            if not vals:
                row.append("–")
            elif len(vals) == 1:
                row.append(_fmt(vals[0]))
            else:
                mean, half_range = _mean_half_range(vals)
                row.append(f"{_fmt(mean)} ± {_fmt(half_range)}")
        rows.append(row)
    return _table(["arm", *keys], rows)


# ----------------------------------------------------------------------------------------------- plots

def read_metrics(path: str | Path) -> list[dict]:
    """The records of a metrics.jsonl (each needs ``phase`` and ``step``); errors name ``path:line``."""
    return [rec for _, rec in read_jsonl(path, {"phase": str, "step": int})]


def _figure(rows: int, cols: int):
    from matplotlib.figure import Figure

    return Figure(figsize=(4.2 * cols, 3.2 * rows), layout="constrained")


def plot_loss_curves(metrics: dict[str, str | Path], out_png: str | Path, phase: str = "lm") -> Path:
    """Per-language loss curves (one panel per language, one line per arm) from metrics.jsonl files."""
    series: dict[str, dict[str, tuple[list[int], list[float]]]] = {}  # lang -> arm -> (steps, losses)
    for arm, path in metrics.items():
        for rec in read_metrics(path):
            if rec["phase"] != phase:
                continue
            for key, v in rec.items():
                if key.startswith("loss_") and isinstance(v, (int, float)) and v is not None:
                    xs, ys = series.setdefault(key[5:], {}).setdefault(arm, ([], []))
                    xs.append(rec["step"])
                    ys.append(float(v))
    if not series:
        raise ValueError(f"plot_loss_curves: no loss_<lang> fields in phase {phase!r} records of {list(metrics)}")
    langs = sorted(series)
    fig = _figure(1, len(langs))
    axes = fig.subplots(1, len(langs), squeeze=False)[0]
    for ax, lang in zip(axes, langs):
        for arm, (xs, ys) in series[lang].items():
            ax.plot(xs, ys, label=arm)
        ax.set_title(f"{phase} loss, {lang}")
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats)")
        ax.legend(fontsize="small")
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out


def plot_probe_over_training(metrics_path: str | Path, out_png: str | Path,
                             stats: Sequence[str] = ("cos_true", "acc"), layers: Sequence[str] | None = None) -> Path:
    """Probe statistics over training, one panel per (stat, group), one line per layer. Steps of later
    phases continue after the earlier phases' last step (align, then lm)."""
    recs = read_metrics(metrics_path)
    offsets: dict[str, int] = {}
    last = 0
    for rec in recs:
        if rec["phase"] not in offsets:
            offsets[rec["phase"]] = last
        last = max(last, offsets[rec["phase"]] + rec["step"])
    groups: list[str] = []
    data: dict[tuple[str, str], tuple[list[int], list[list[float]]]] = {}
    for rec in recs:
        for key, v in rec.items():
            for stat in stats:
                suffix = f"_{stat}"
                if key.startswith("probe_") and key.endswith(suffix) and isinstance(v, list):
                    group = key[len("probe_"): -len(suffix)]
                    if group not in groups:
                        groups.append(group)
                    xs, ys = data.setdefault((stat, group), ([], []))
                    xs.append(offsets[rec["phase"]] + rec["step"])
                    ys.append([math.nan if y is None else y for y in v])
    if not data:
        raise ValueError(f"plot_probe_over_training: {metrics_path} has no probe_<group>_<stat> records")
    fig = _figure(len(stats), len(groups))
    axes = fig.subplots(len(stats), len(groups), squeeze=False)
    for r, stat in enumerate(stats):
        for c, group in enumerate(groups):
            ax = axes[r][c]
            xs, ys = data.get((stat, group), ([], []))
            n_layers = len(ys[0]) if ys else 0
            names = list(layers) if layers is not None else [f"layer {k}" for k in range(n_layers)]
            for k in range(n_layers):
                ax.plot(xs, [y[k] for y in ys], label=names[k] if k < len(names) else str(k),
                        color=_shade(k, n_layers))
            ax.set_title(f"{group}: {stat}")
            ax.set_xlabel("step (align, then lm)")
            if ys:
                ax.legend(fontsize="x-small", ncol=2)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out


def plot_probe_layers(results: dict, out_png: str | Path) -> Path | None:
    """One evaluation's alignment per layer: retrieval acc@1 (each group's chance dotted) and the cosine gap
    ``cos_true - cos_random``, one line per probe group, plus acc@1 of each sentence-retrieval set. None
    (nothing written) when the results have neither."""
    probe = results.get("probe") or {"groups": {}}
    retrieval = results.get("retrieval") or {}
    if not probe["groups"] and not retrieval:
        return None
    layers = probe.get("layers") or next(iter(retrieval.values()))["layers"]
    xs = list(range(len(layers)))
    fig = _figure(1, 2)
    ax_acc, ax_cos = fig.subplots(1, 2, squeeze=False)[0]
    lines = [(f"probe {g}", d) for g, d in probe["groups"].items()] + [(f"retrieval {n}", r)
                                                                       for n, r in retrieval.items()]
    for k, (name, d) in enumerate(lines):
        color = _shade(k, len(lines))
        ax_acc.plot(xs, d["acc"], marker="o", label=name, color=color)
        ax_acc.axhline(d["chance"], linestyle=":", linewidth=0.8, color=color)
        if name.startswith("probe "):
            gap = [math.nan if t is None or r is None else t - r for t, r in zip(d["cos_true"], d["cos_random"])]
            ax_cos.plot(xs, gap, marker="o", label=name, color=color)
    for ax, title in ((ax_acc, "retrieval acc@1 (dotted: chance)"), (ax_cos, "cos true - cos random")):
        ax.set_title(title)
        ax.set_xticks(xs, layers, rotation=60, fontsize="x-small")
        ax.legend(fontsize="x-small")
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out


def _shade(k: int, n: int) -> tuple[float, float, float]:
    from matplotlib import colormaps

    r, g, b, _ = colormaps["viridis"](k / max(1, n - 1))
    return (r, g, b)


def baselines(results: dict) -> dict[str, dict[str, float]]:
    """The baselines of one evaluation's accuracies, keyed like :func:`headline`: ``{key: {"chance": x,
    "majority": y}}`` (majority where the evaluation measured one). Perplexities and cosines have none."""
    out: dict[str, dict[str, float]] = {}
    for group, g in ((results.get("probe") or {}).get("groups") or {}).items():
        out[f"align acc {group} (best layer)"] = {"chance": g["chance"]}
    for name, r in (results.get("retrieval") or {}).items():
        out[f"retrieval {name} (best layer)"] = {"chance": r["chance"]}
    for lang, k in (results.get("knowledge") or {}).items():
        out[f"knowledge {lang}"] = {name: k[name] for name in ("chance", "majority") if k.get(name) is not None}
    t = results.get("transfer")
    if t and t.get("labels"):
        chance = 1.0 / len(t["labels"])
        majority = t.get("majority") or {}
        for kind in ("probe", "finetune"):
            for lang in [t["train_lang"], *t["linear_probe"]["target"]]:
                base = {"chance": chance}
                if lang in majority:
                    base["majority"] = majority[lang]
                out[f"transfer {kind} {lang}"] = base
    return out


def plot_arm_summary(runs: dict[str, list[dict]], keys: Sequence[str], out_png: str | Path,
                     title: str = "") -> Path:
    """The comparison table as bars: one panel per key, one bar per arm at the mean over its runs (seeds), each
    run a dot (so the seed spread is visible), and each accuracy's baselines as horizontal lines (dotted:
    chance, dashed: majority; :func:`baselines`)."""
    heads = {arm: [headline(r) for r in rs] for arm, rs in runs.items()}
    base = {}
    for rs in runs.values():
        for r in rs:
            for k, b in baselines(r).items():
                base.setdefault(k, b)
    keys = [k for k in keys if any(h.get(k) is not None for hs in heads.values() for h in hs)]
    if not keys:
        raise ValueError("plot_arm_summary: none of the keys has a value")
    cols = min(4, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig = _figure(rows, cols)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    arms = list(heads)
    for ax, key in zip(axes, keys):
        for i, arm in enumerate(arms):
            vals = [h[key] for h in heads[arm] if h.get(key) is not None and not math.isnan(h[key])]
            if not vals:
                continue
            color = _shade(i, len(arms))
            ax.bar(i, _mean_half_range(vals)[0], color=color, alpha=0.6)
            ax.plot([i] * len(vals), vals, "o", color="black", markersize=3)
        for name, style in (("chance", ":"), ("majority", "--")):
            if name in base.get(key, {}):
                ax.axhline(base[key][name], linestyle=style, linewidth=1, color="grey", label=name)
        if key in base:
            ax.legend(fontsize="xx-small")
        ax.set_title(key, fontsize="small")
        ax.set_xticks(range(len(arms)), arms, rotation=30, fontsize="x-small")
    for ax in axes[len(keys):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out


def lower_is_better(key: str) -> bool:
    """Perplexities are better lower; every other headline number (accuracies, cosine gaps) higher."""
    return key.startswith("ppl ")


def versus_markdown(runs: dict[str, list[dict]], reference: str, keys: Sequence[str]) -> str:
    """The reference arm against every other arm, per headline number: the reference's ``mean ± half-range``
    over its runs (seeds), and for each other arm the difference of the means (reference − arm) with a verdict:

    - ``better`` / ``worse``: the reference is ahead / behind by more than the seed spread, i.e. the
      difference of the means exceeds the sum of the two half-ranges (the seed ranges do not overlap);
    - ``≈``: within the spread;
    - ``(1 seed)``: either arm has a single run, so there is no spread to compare with.

    Direction: lower is better for perplexities, higher for everything else (:func:`lower_is_better`)."""
    if reference not in runs:
        raise ValueError(f"versus_markdown: no arm {reference!r} (arms: {sorted(runs)})")
    heads = {arm: [headline(r) for r in rs] for arm, rs in runs.items()}
    others = [arm for arm in runs if arm != reference]
    rows = []
    for key in keys:
        ref = [h[key] for h in heads[reference] if h.get(key) is not None and not math.isnan(h[key])]
        if not ref:
            continue
        m_ref, hr_ref = _mean_half_range(ref)
        row = [key, _fmt(m_ref) + (f" ± {_fmt(hr_ref)}" if len(ref) > 1 else "")]
        for arm in others:
            vals = [h[key] for h in heads[arm] if h.get(key) is not None and not math.isnan(h[key])]
            if not vals:
                row.append("–")
                continue
            m, hr = _mean_half_range(vals)
            diff = m_ref - m
            if len(ref) < 2 or len(vals) < 2:
                verdict = "(1 seed)"
            elif abs(diff) <= hr_ref + hr:
                verdict = "≈"
            else:
                verdict = "better" if (diff < 0) == lower_is_better(key) else "worse"
            row.append(f"{diff:+.3f} {verdict}" if abs(diff) < 1e4 else f"{diff:+.3g} {verdict}")
        rows.append(row)
    return _table(["metric", f"{reference} (mean ± half-range)", *(f"{reference} − {a}" for a in others)], rows)
