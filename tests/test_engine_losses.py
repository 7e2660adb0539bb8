"""The engine's phase-1 and phase-2 losses and gradients (2 ranks, ZeRO-3) == one process on the global batch.

Runs tests/dist_scripts/check_losses.py on 2 in-process ranks (see its docstring for what is computed).
"""

from __future__ import annotations

import check_losses
import pytest
from distributed import run_distributed_test
from engine_common import write_run_config
from tiny_data import write_multiword_table

pytestmark = pytest.mark.slow


# (alignment loss, LM loss) implementations: the blockwise alignment loss with megatron's vocab-parallel
# cross-entropy, and the naive alignment loss with the fused linear cross-entropy head (ZeRO-3 external weight);
# the third value: align.word_bos (a BOS before every dictionary word)
IMPLS = [("chunked", "megatron", False), ("naive", "chunked", False), ("chunked", "megatron", True)]


@pytest.fixture(scope="module", params=IMPLS, ids=lambda p: f"align-{p[0]}-lm-{p[1]}" + ("-bos" if p[2] else ""))
def report(request, tmp_path_factory, tiny_data):
    align_impl, lm_impl, word_bos = request.param
    root = tmp_path_factory.mktemp("losses")
    # multi-token words in entries of 2 or 3 words: ranks hold different word counts, words have LM targets
    data = {**tiny_data, "table": write_multiword_table(root / "mw_table", vocab_size=800)}
    config = write_run_config(root / "cfg.yaml", data, root / "run",
                              align={"grad_accum": 2, "alpha": 1.0, "loss_impl": align_impl, "word_bos": word_bos},
                              lm={"lm_loss_impl": lm_impl})
    rank0, _ = run_distributed_test(check_losses.check, world_size=2, init_process_group=False, timeout=300,
                                    func_args=(str(config),))
    return rank0


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
