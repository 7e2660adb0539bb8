"""The shared config mechanism (config_loader), the pure run-config checks and the shard Manifest contract."""

from __future__ import annotations

import json

import pytest

from prealign_scale.config import Config, check_values, parse_config
from prealign_scale.config_loader import ConfigError
from prealign_scale.data.build_config import BuildError, read_build_yaml
from prealign_scale.data.shard_format import Manifest, ManifestError


def test_check_values_returns_every_problem_without_reading_files():
    problems = check_values(parse_config(None, ["lm.lr=0", "align.warmup_frac=2", "run.phase=lmm"]))
    assert problems[0] == "run.phase: must be one of all, align, lm, got 'lmm' (did you mean 'lm'?)"
    assert "lm.lr: must be > 0, got 0.0" in problems
    assert "align.warmup_frac: must be between 0 and 1, got 2.0" in problems
    assert check_values(parse_config(None, ["lm.steps=1"])) == []


def test_run_config_yaml_error_names_file_and_line(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("lm:\n  steps: 3\n  lr: [1\n")
    with pytest.raises(ConfigError, match=rf"^{path}:4: not valid YAML"):
        parse_config(path)
    assert Config().align.tau == 0.1  # the one home of the default


def test_build_yaml_is_type_checked_with_file_line(tmp_path):
    path = tmp_path / "b.yaml"
    path.write_text("tokenizer: t\nseq_lenn: 5\n")
    with pytest.raises(BuildError, match=rf"^{path}:2: unknown key 'seq_lenn'; did you mean 'seq_len'\?"):
        read_build_yaml(path)
    path.write_text("tokenizer: t\nseq_len: '5'\n")
    with pytest.raises(BuildError, match=rf"^{path}:2: seq_len: expected int, got '5' \(str\)"):
        read_build_yaml(path)
    path.write_text("tokenizer: t\np: 0\ncorpora: {en: [a.txt]}\n")
    assert read_build_yaml(path) == {"tokenizer": "t", "p": 0.0, "corpora": {"en": ["a.txt"]}}


def test_manifest_round_trip_and_problems(tmp_path):
    m = Manifest(format_version=1, seq_len=8, vocab_size=10, languages=["en"], eos_id=1,
                 shards=[{"name": "shard-000000.tar", "samples": 1}], vocab_offset=0)
    m.write(tmp_path)
    assert Manifest.read(tmp_path) == m and m.validate() == []
    (tmp_path / "manifest.json").write_text(json.dumps({**m.to_dict(), "seq_len": "8"}))
    with pytest.raises(ManifestError, match=r"manifest.json: field 'seq_len' missing or not a int$"):
        Manifest.read(tmp_path)
    (tmp_path / "manifest.json").write_text("{")
    with pytest.raises(ManifestError, match="manifest.json: not valid JSON"):
        Manifest.read(tmp_path)
    assert Manifest(**{**m.to_dict(), "format_version": 2}).validate() == ["format_version 2, this code reads 1"]
    assert Manifest.problems_of({**m.to_dict(), "shards": [{"name": "a"}]}) == ["shards[0]: missing field(s) ['samples']"]
