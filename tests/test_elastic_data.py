"""Elastic resume of the data position (no engine): the states of N data-parallel ranks, remapped to M ranks,
read the rest of the epoch exactly once (shard reader), or continue at the same global step (dictionary)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "dist_scripts"))

from reliability_cases import raised, record_case
from tiny_data import build_tiny_data

from prealign_scale.data.shard_reader import ShardLoader


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return build_tiny_data(tmp_path_factory.mktemp("elastic") / "data")["shards"]  # 4 shards x 8 samples


def loaders(shards, world: int, workers: int = 0, b: int = 2) -> list[ShardLoader]:
    return [ShardLoader(shards, b, dp_rank=r, dp_world_size=world, seed=7, num_workers=workers)
            for r in range(world)]


def take(loader: ShardLoader, n: int) -> list[list]:
    it = iter(loader)
    out = [next(it)["keys"] for _ in range(n)]
    it.close()
    return out


def epoch_keys(shards, world: int, workers: int = 0) -> list:
    ls = loaders(shards, world, workers)
    return sorted(k for lo in ls for mb in take(lo, lo.batches_per_epoch) for k in mb)


@pytest.mark.parametrize("old,new,old_workers,new_workers,done", [
    (2, 1, 0, 0, 2), (1, 2, 0, 0, 4), (2, 1, 2, 0, 3), (1, 4, 0, 1, 1), (4, 1, 0, 0, 3), (2, 4, 0, 0, 0)])
def test_remapped_positions_read_the_rest_of_the_epoch_once(shards, old, new, old_workers, new_workers, done):
    before = loaders(shards, old, old_workers)
    seen = [k for lo in before for mb in take(lo, done) for k in mb]
    states = [lo.state_dict() for lo in before]
    after = loaders(shards, new, new_workers)
    for lo in after:
        lo.load_remapped_state(states)
    per_rank = len(after[0].pending)
    assert all(len(lo.pending) == per_rank for lo in after)  # the ranks stay in step
    rest = [[k for mb in take(lo, per_rank) for k in mb] for lo in after]
    seen += [k for keys in rest for k in keys if k is not None]  # None: a padding row (no sample)
    if done == 0:
        assert per_rank == 0  # at an epoch boundary: the new layout starts the same epoch
    else:
        assert sorted(seen) == epoch_keys(shards, old, old_workers)  # the old layout's epoch, each sample once
        assert all(lo.epoch == 1 and lo.batches == 0 and not lo.pending for lo in after)
        # the next epoch is the new layout's own, from its start
        nxt = [k for lo in after for mb in take(lo, lo.batches_per_epoch) for k in mb]
        assert sorted(nxt) == epoch_keys(shards, new, new_workers)


def test_remapped_state_survives_a_save_mid_way(shards):
    """A state saved while the pending micro-batches are being read resumes (same rank count) exactly."""
    ones = loaders(shards, 2)
    for lo in ones:
        take(lo, 3)
    one = loaders(shards, 1)[0]
    one.load_remapped_state([lo.state_dict() for lo in ones])
    full = take(one, len(one.pending) + 2)
    again = loaders(shards, 1)[0]
    again.load_remapped_state([lo.state_dict() for lo in ones])
    first = take(again, 3)
    mid = again.state_dict()
    resumed = loaders(shards, 1)[0]
    resumed.load_state_dict(mid)
    assert first + take(resumed, len(full) - 3) == full


def test_remap_refuses_other_data(shards):
    states = [lo.state_dict() for lo in loaders(shards, 2)]
    lo = loaders(shards, 1, b=4)[0]
    with pytest.raises(ValueError, match="micro_batch_size") as err:
        lo.load_remapped_state(states)
    record_case("checkpoints", "elastic resume of the shard position with another micro batch size",
                "refused, naming micro_batch_size", raised(err.value))


def test_dictionary_position_carries_over_with_the_same_global_step(shards):
    """Phase 1: 2 ranks x 4 entries -> 1 rank x 8 entries continue with the same entries at every step."""
    from prealign_scale.alignment.table import AlignmentTable
    from prealign_scale.data.dict_loader import DictionaryLoader

    table = AlignmentTable.load(Path(shards).parent / "clone/table")

    def make(world, per, rank=0):
        return DictionaryLoader(table, per, dp_rank=rank, dp_world_size=world, seed=3, pad_id=0)

    ref = make(1, 8)
    it = iter(ref)
    ref_steps = [sorted(next(it)["entry_ids"].tolist()) for _ in range(5)]
    two = [make(2, 4, r) for r in range(2)]
    for lo in two:
        its = iter(lo)
        for _ in range(3):
            next(its)
    one = make(1, 8)
    one.load_remapped_state(two[0].state_dict())
    it = iter(one)
    assert [sorted(next(it)["entry_ids"].tolist()) for _ in range(2)] == ref_steps[3:]
    odd = make(1, 5)
    with pytest.raises(ValueError, match="whole number of global steps") as err:
        odd.load_remapped_state(two[0].state_dict())
    record_case("checkpoints", "elastic resume of the dictionary position with a global batch of other size",
                "refused: not a whole number of global steps", raised(err.value))


def test_failure_line_hint(tmp_path):
    """After a failure the hint "Run the same command to resume" is right on any rank count (a checkpoint of
    another rank count is continued); a refused elastic resume says instead on how many ranks to resume."""
    from prealign_scale.config import Config
    from prealign_scale.engine.checkpoint import CheckpointManager
    from prealign_scale.engine.elastic import ElasticResumeError
    from prealign_scale.engine.run import failure_line

    ckpt = CheckpointManager(tmp_path, keep_last=2)
    ckpt.root.mkdir()
    (ckpt.root / "latest").write_text("lm-step00000002")
    line = failure_line(RuntimeError("boom"), Config(), ckpt)
    assert line.endswith("Run the same command to resume from lm-step00000002")
    refused = ElasticResumeError("x was written by 2 data-parallel ranks, this run has 4: ...; resume it on 2 ranks")
    line = failure_line(refused, Config(), ckpt)
    assert "Run the same command" not in line and line.endswith("resume it on 2 ranks")
    record_case("checkpoints", "the failure line after an elastic resume was refused (before: a wrong "
                "\"run the same command\" hint)", "names the rank count to resume on, no \"run the same command\"",
                f"`{line}`")
