"""launchers/sweep_report.py --from-json: the committed tables regenerate byte for byte from the committed JSON."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results" / "english_clone"
SWEEP = ROOT / "configs" / "repro" / "english_clone.sweep.yaml"


def load_launcher(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "launchers" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_from_json_reproduces_the_committed_tables_in_sweep_order(tmp_path, capsys):
    shutil.copytree(RESULTS / "runs", tmp_path / "runs")
    assert load_launcher("sweep_report").main([str(SWEEP), "--out", str(tmp_path), "--from-json"]) == 0
    assert (tmp_path / "table.md").read_text() == (RESULTS / "table.md").read_text()
    assert (tmp_path / "probe_phases.md").read_text() == (RESULTS / "probe_phases.md").read_text()
    assert (tmp_path / "versus.md").read_text() == (RESULTS / "versus.md").read_text()
    assert (tmp_path / "summary_3m.png").is_file() and (tmp_path / "summary_12m.png").is_file()
    # sweep order (3m before 12m), not file-name order
    names = [line.split(" | ")[0][2:] for line in (tmp_path / "probe_phases.md").read_text().splitlines()[2:]]
    assert names[0] == "3m_joint_s1" and names[-1] == "12m_prealign_s1"


def test_probe_phase1_markdown_regenerates_from_the_committed_json(tmp_path, capsys):
    md = tmp_path / "probe_phase1.md"
    assert load_launcher("probe_phase1").main([str(SWEEP), "--json", str(RESULTS / "probe_phase1.json"),
                                               "--markdown", str(md), "--from-json"]) == 0
    assert md.read_text() == (RESULTS / "probe_phase1.md").read_text()


def test_real_pair_tables_regenerate_from_the_committed_json(tmp_path, capsys):
    results = ROOT / "docs" / "results" / "real_pair_en_es"
    shutil.copytree(results / "runs", tmp_path / "runs")
    sweep = ROOT / "configs" / "repro" / "real_pair_en_es.sweep.yaml"
    assert load_launcher("sweep_report").main([str(sweep), "--out", str(tmp_path), "--from-json"]) == 0
    for name in ("table.md", "probe_phases.md", "versus.md"):
        assert (tmp_path / name).read_text() == (results / name).read_text(), name
    # the control arm is in every table, and the page quotes the generated versus table
    assert "| 3m shuffled (n=2) |" in (results / "table.md").read_text()
    versus_3m = (results / "versus.md").read_text().split("## 3m\n\n")[1].split("\n\n")[0]
    assert versus_3m.strip().splitlines()[2] in (ROOT / "docs" / "results" / "real_pair_en_es.md").read_text()
