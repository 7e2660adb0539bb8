"""Reports: the results JSON, the markdown tables (exact), the comparison table, and the PNG plots."""

from __future__ import annotations

import json
import math

import pytest

from prealign_scale.eval.io import EvalInputError
from prealign_scale.eval.report import (
    baselines,
    compare_markdown,
    headline,
    markdown_report,
    plot_arm_summary,
    plot_loss_curves,
    plot_probe_over_training,
    versus_markdown,
    write_results,
)

PNG = b"\x89PNG\r\n\x1a\n"


def results(acc_seen: float = 1.0, ppl_clone: float = 20.0) -> dict:
    layers = ["embedding", "block1", "final_norm", "unembedding"]
    group = {"pairs": 4, "sources": 4, "candidates": 4, "chance": 0.25, "acc": [acc_seen, 0.5, 0.75, 0.25],
             "acc_src2tgt": [1.0] * 4, "acc_tgt2src": [1.0] * 4, "cos_true": [0.9, 0.8, 0.7, 0.6],
             "cos_random": [0.1, 0.2, 0.3, None]}
    return {
        "model": "runs/x/hf",
        "lm": {"shards": {"clone": {"loss": math.log(ppl_clone), "ppl": ppl_clone, "tokens": 10},
                          "en": {"loss": 2.0, "ppl": math.exp(2.0), "tokens": 90}, "samples": 3}},
        "probe": {"layers": layers, "groups": {"seen": group}},
        "knowledge": {"clone": {"accuracy": 0.5, "chance": 0.1}},
        "transfer": {"train_lang": "en", "linear_probe": {"layers": layers, "acc": {"en": [0.9] * 4, "clone": [0.4] * 4},
                                                          "source": 0.9, "target": {"clone": 0.4}}},
    }


def test_headline_numbers():
    assert headline(results()) == {
        "ppl clone": 20.0, "ppl en": pytest.approx(math.exp(2.0)),
        "align acc seen (final_norm)": 0.75, "align acc seen (best layer)": 1.0,
        "cos seen true-random (final_norm)": pytest.approx(0.4),
        "knowledge clone": 0.5, "transfer probe en": 0.9, "transfer probe clone": 0.4}


def test_markdown_report_tables():
    md = markdown_report(results(), title="T")
    assert md.startswith("# T\n\nModel: `runs/x/hf`\n\n| metric | value |\n|---|---|\n| ppl clone | 20.000 |\n")
    assert "| layer | seen acc@1 | seen cos true | seen cos random |\n" in md
    assert "| unembedding | 0.250 | 0.600 | – |\n" in md
    assert "(chance seen: 0.2500)" in md
    assert "| layer | en | clone |\n|---|---|---|\n| embedding | 0.900 | 0.400 |\n" in md


def test_compare_markdown_mean_and_half_range():
    md = compare_markdown({"joint": [results(0.5, 30.0), results(0.7, 40.0)], "prealign": [results(1.0, 10.0)]},
                          keys=["ppl clone", "align acc seen (best layer)", "missing"])
    assert md == ("| arm | ppl clone | align acc seen (best layer) | missing |\n|---|---|---|---|\n"
                  "| joint (n=2) | 35.000 ± 5.000 | 0.750 ± 0.000 | – |\n"
                  "| prealign (n=1) | 10.000 | 1.000 | – |\n")


def test_write_results_writes_nan_as_null(tmp_path):
    p = write_results({"a": float("nan"), "b": [1.0, float("inf")], "c": (1, 2)}, tmp_path / "r" / "res.json")
    assert json.loads(p.read_text()) == {"a": None, "b": [1.0, None], "c": [1, 2]}


def write_metrics(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_plots_are_written(tmp_path):
    arms = {}
    for arm, base in (("joint", 5.0), ("prealign", 4.0)):
        recs = [{"phase": "align", "step": s, "loss": 9.0, "probe_seen_acc": [0.1 * s, 0.2], "probe_seen_cos_true":
                 [0.5, 0.6], "probe_unseen_acc": [0.0, 0.1], "probe_unseen_cos_true": [0.2, 0.3]} for s in (1, 2)]
        recs += [{"phase": "lm", "step": s, "loss": base - s, "loss_en": base - s, "loss_clone": base + 1 - s,
                  "lr": 1e-3} for s in range(1, 5)]
        recs.append({"phase": "lm", "step": 4, "probe_seen_acc": [0.5, 0.4], "probe_seen_cos_true": [0.7, 0.8]})
        arms[arm] = write_metrics(tmp_path / f"{arm}.jsonl", recs)
    loss_png = plot_loss_curves(arms, tmp_path / "plots" / "loss.png")
    probe_png = plot_probe_over_training(arms["prealign"], tmp_path / "plots" / "probe.png",
                                         layers=["embedding", "unembedding"])
    for p in (loss_png, probe_png):
        assert p.read_bytes()[:8] == PNG and p.stat().st_size > 5000
    with pytest.raises(ValueError, match="no loss_<lang> fields in phase 'align'"):
        plot_loss_curves(arms, tmp_path / "x.png", phase="align")


def test_bad_metrics_line_is_named(tmp_path):
    p = tmp_path / "metrics.jsonl"
    p.write_text('{"phase": "lm", "step": 1, "loss_en": 3.0}\n{"phase": "lm", "loss_en": 2.0}\n')
    with pytest.raises(EvalInputError, match=r"metrics\.jsonl:2: missing field 'step'"):
        plot_loss_curves({"a": p}, tmp_path / "x.png")


def test_baselines_of_every_accuracy():
    r = results()
    r["knowledge"]["clone"]["majority"] = 0.3
    r["retrieval"] = {"verses": {"chance": 0.01, "acc": [0.2, 0.3]}}
    r["transfer"].update(labels=["a", "b", "c", "d"], majority={"clone": 0.35})
    assert baselines(r) == {
        "align acc seen (best layer)": {"chance": 0.25},
        "retrieval verses (best layer)": {"chance": 0.01},
        "knowledge clone": {"chance": 0.1, "majority": 0.3},
        "transfer probe en": {"chance": 0.25}, "transfer probe clone": {"chance": 0.25, "majority": 0.35},
        "transfer finetune en": {"chance": 0.25}, "transfer finetune clone": {"chance": 0.25, "majority": 0.35}}
    assert set(baselines(r)) <= set(headline(r)) | {"transfer finetune en", "transfer finetune clone"}


def test_arm_summary_plot(tmp_path):
    runs = {"joint": [results(0.5, 30.0), results(0.7, 40.0)], "prealign": [results(1.0, 10.0)]}
    png = plot_arm_summary(runs, ["ppl clone", "align acc seen (best layer)", "knowledge clone", "absent"],
                           tmp_path / "s" / "summary.png", title="3m")
    assert png.read_bytes()[:8] == PNG and png.stat().st_size > 5000
    with pytest.raises(ValueError, match="none of the keys"):
        plot_arm_summary(runs, ["absent"], tmp_path / "x.png")


def test_versus_marks_differences_beyond_the_seed_spread():
    # best-layer acc = max(acc_seen, 0.75) in these results
    runs = {"prealign": [results(1.0, 10.0), results(0.9, 12.0)],   # acc 0.95 ± 0.05, ppl 11 ± 1
            "joint": [results(0.5, 30.0), results(0.3, 32.0)],      # acc 0.75 ± 0, ppl 31 ± 1: beyond
            "shuffled": [results(0.95, 11.5), results(0.85, 13.0)],  # acc 0.9 ± 0.05, ppl 12.25 ± 0.75: within
            "big": [results(1.0, 5.0)]}                             # one run: no spread
    md = versus_markdown(runs, "prealign", ["ppl clone", "align acc seen (best layer)", "absent"])
    assert md == (
        "| metric | prealign (mean ± half-range) | prealign − joint | prealign − shuffled | prealign − big |\n"
        "|---|---|---|---|---|\n"
        "| ppl clone | 11.000 ± 1.000 | -20.000 better | -1.250 ≈ | +6.000 (1 seed) |\n"
        "| align acc seen (best layer) | 0.950 ± 0.050 | +0.200 better | +0.050 ≈ | -0.050 (1 seed) |\n")
    worse = versus_markdown({"a": [results(0.1, 50.0), results(0.2, 52.0)],
                             "b": [results(0.9, 30.0), results(1.0, 32.0)]}, "a",
                            ["ppl clone", "align acc seen (best layer)"])
    assert "| +20.000 worse |" in worse and "| -0.200 worse |" in worse
    with pytest.raises(ValueError, match="no arm 'x'"):
        versus_markdown(runs, "x", ["ppl clone"])
