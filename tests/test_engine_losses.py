"""The engine's phase-1 and phase-2 losses and gradients (2 ranks, ZeRO-3) == one process on the global batch.

Runs tests/dist_scripts/check_losses.py under torchrun (see its docstring for what is computed).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "dist_scripts"))

from engine_common import BIN, ROOT, cpu_env, write_run_config
from tiny_data import build_tiny_data, write_multiword_table

from prealign_scale.dist import free_port

pytestmark = pytest.mark.slow


# (alignment loss, LM loss) implementations: the blockwise alignment loss with megatron's vocab-parallel
# cross-entropy, and the naive alignment loss with the fused linear cross-entropy head (ZeRO-3 external weight);
# the third value: align.word_bos (a BOS before every dictionary word)
IMPLS = [("chunked", "megatron", False), ("naive", "chunked", False), ("chunked", "megatron", True)]


@pytest.fixture(scope="module", params=IMPLS, ids=lambda p: f"align-{p[0]}-lm-{p[1]}" + ("-bos" if p[2] else ""))
def report(request, tmp_path_factory):
    align_impl, lm_impl, word_bos = request.param
    root = tmp_path_factory.mktemp("losses")
    data = build_tiny_data(root / "data")
    # multi-token words in entries of 2 or 3 words: ranks hold different word counts, words have LM targets
    data["table"] = write_multiword_table(root / "data/mw_table", vocab_size=800)
    config = write_run_config(root / "cfg.yaml", data, root / "run",
                              align={"grad_accum": 2, "alpha": 1.0, "loss_impl": align_impl, "word_bos": word_bos},
                              lm={"lm_loss_impl": lm_impl})
    cmd = [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port()),
           "tests/dist_scripts/check_losses.py", str(config), str(root / "out")]
    proc = subprocess.run(cmd, cwd=ROOT, env=cpu_env(), check=False, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return json.loads((root / "out/report.json").read_text())


def test_alignment_phase_matches_single_process(report):
    r = report["align"]
    assert r["partitioned"] and r["n_params"] == 2 + 2 * 6 + 1  # each rank holds half of every parameter
    assert r["words_per_rank"][0] != r["words_per_rank"][1] or r["words_per_rank"][2] != r["words_per_rank"][3]
    assert r["lm_tokens"] > 0 and r["n_layers"] == 2 + 2  # tiny: 2 blocks -> n_layers + 2 word vectors
    # every word token is an LM target with a BOS before the word; without it, all but each word's first
    assert r["lm_tokens"] == r["word_tokens"] - (0 if r["word_bos"] else r["words"])
    assert r["engine_align"] == pytest.approx(r["ref_align"], rel=1e-6)
    assert r["engine_lm"] == pytest.approx(r["ref_lm"], rel=1e-6)
    assert r["engine_loss"] == pytest.approx(r["ref_loss"], rel=1e-6)
    assert r["grad_rel_err"] < 1e-5  # every parameter's full gradient, relative to its largest entry


def test_lm_phase_matches_hand_computation(report):
    r = report["lm"]
    assert r["engine_loss"] == pytest.approx(r["ref_loss"], rel=1e-6)
    assert r["grad_rel_err"] < 1e-5
    # The sample really exercises input-only targets and document masking: a second label shift of the
    # inputs, or plain causal attention, would give a loss far outside the tolerance above.
    assert r["targets_not_next_input"] > 0
    assert abs(r["shifted_loss"] - r["ref_loss"]) > 1e-4
    assert abs(r["causal_loss"] - r["ref_loss"]) > 1e-4
    assert set(r["lang_losses"]) == {"loss_clone", "loss_en"}
