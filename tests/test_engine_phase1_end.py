"""Phase 1 through the real `deepspeed` launcher (2 CPU ranks, ZeRO-3): align.epochs, align.word_bos and an
early end at align.stop_at_seen_acc, then phase 2 from its checkpoint, and a restart that finds both done."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent / "dist_scripts"))

from engine_common import launch, read_metrics, write_run_config
from tiny_data import build_tiny_data

pytestmark = pytest.mark.slow


def test_epochs_bos_and_an_early_end_of_phase_1(tmp_path):
    from prealign_scale.engine.resolve_config import align_entry_count
    from prealign_scale.text.tokenizer import load_tokenizer

    data = build_tiny_data(tmp_path / "data")
    # stop at the first probe after step 0 (threshold 0): phase 1 ends at step 2 of its epochs-derived steps
    cfg = write_run_config(tmp_path / "c.yaml", data, tmp_path / "run",
                           align={"steps": 0, "epochs": 3.0, "word_bos": True, "stop_at_seen_acc": 0.0,
                                  "warn_below_seen_acc": 0.0},
                           lm={"steps": 2}, run={"probe_every": 2})
    out = launch(cfg)
    resolved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["align"]
    n = align_entry_count(str(data["table"]), 64, bos=True)
    assert resolved["steps"] == math.ceil(3.0 * (n // 16)) > 2 and resolved["epochs"] == 3.0
    assert resolved["bos_id"] == load_tokenizer(data["tokenizer"]).bos_token_id is not None
    assert ">= align.stop_at_seen_acc=0" in out and "phase lm: starting from the weights of align-step00000002" in out
    recs = read_metrics(tmp_path / "run")
    align_steps = [r["step"] for r in recs if r["phase"] == "align" and "loss" in r]
    assert align_steps == [1, 2]
    [event] = [r for r in recs if r.get("kind") == "event"]
    assert (event["event"], event["phase"], event["step"]) == ("align_stop", "align", 2)
    assert [r["step"] for r in recs if r["phase"] == "lm" and "loss" in r] == [1, 2]
    # phase-1 LM loss with BOS: every word token is a target, so the LM term is never zero
    assert all(r["lm_loss"] > 0 for r in recs if r["phase"] == "align" and "loss" in r)
    state = json.loads((tmp_path / "run" / "checkpoints" / "align-step00000002" / "state.json").read_text())
    assert (state["step"], state["phase_steps"]) == (2, 2)  # saved as the end of phase 1
    again = launch(cfg)  # both phases done: nothing is trained again
    assert "resuming from" in again and "starting from the weights" not in again
    assert read_metrics(tmp_path / "run") == recs
