"""Every shipped reproduction sweep (configs/repro/*.sweep.yaml) expands, and each of its runs' configs
(base + overrides) parses and passes the value checks; every shipped eval config loads. A typo in an arm's
override would otherwise surface hours into a sweep."""

from __future__ import annotations

from pathlib import Path

import pytest

from prealign_scale.config import check_values, parse_config
from prealign_scale.eval.run_eval import EvalConfig
from prealign_scale.launch.sweep import expand_sweep, load_sweep

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "repro").glob("*.sweep.yaml")), ids=lambda p: p.name)
def test_sweep_runs_parse(path, monkeypatch):
    monkeypatch.chdir(ROOT)
    runs = expand_sweep(load_sweep(path))
    assert len({r.out_dir for r in runs}) == len(runs)
    for spec in runs:
        cfg = parse_config(spec.config, list(spec.overrides))
        assert check_values(cfg) == [], spec.name


def test_real_pair_arms_differ_only_where_they_should(monkeypatch):
    monkeypatch.chdir(ROOT)
    runs = {r.name: parse_config(r.config, list(r.overrides))
            for r in expand_sweep(load_sweep(ROOT / "configs/repro/real_pair_en_es.sweep.yaml"))}
    pre, shuf, init = runs["3m_prealign_s1"], runs["3m_shuffled_s1"], runs["3m_init_s1"]
    # the control: PreAlign with another phase-1 table, nothing else
    assert shuf.data.table_dir != pre.data.table_dir and "shuffled" in shuf.data.table_dir
    shuf.data.table_dir = pre.data.table_dir
    shuf.run.out_dir = pre.run.out_dir
    assert shuf == pre
    assert runs["3m_joint_s1"].align.epochs is None and runs["3m_cs_s1"].align.epochs is None
    assert pre.align.epochs == init.align.epochs and pre.data.shard_dir != init.data.shard_dir


@pytest.mark.parametrize("path", sorted((ROOT / "configs").rglob("*eval*.yaml")), ids=lambda p: p.name)
def test_eval_configs_load(path):
    EvalConfig.load(path)
