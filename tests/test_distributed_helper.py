"""tests/distributed.py: results per rank, a failing rank's traceback in the test, stragglers killed."""

from __future__ import annotations

import os
import time

import pytest
from distributed import RankFailed, run_distributed_test

pytestmark = pytest.mark.slow


def _sum_of_ranks(scale: int) -> tuple[int, int, int, str]:
    import torch
    import torch.distributed as dist

    t = torch.tensor([dist.get_rank() * scale])
    dist.all_reduce(t)  # a real collective over the gloo group the helper started
    return dist.get_rank(), dist.get_world_size(), int(t), os.environ["MASTER_ADDR"]


def test_each_rank_returns_its_result():
    assert run_distributed_test(_sum_of_ranks, world_size=2, func_args=(10,)) == [(0, 2, 10, "127.0.0.1"),
                                                                                  (1, 2, 10, "127.0.0.1")]


def _rank1_raises_rank0_hangs() -> None:
    import torch.distributed as dist

    if dist.get_rank() == 1:
        raise ValueError("boom on rank 1")
    time.sleep(3600)  # a straggler: the helper must kill it rather than wait


def test_failing_rank_propagates_its_traceback_and_stragglers_are_killed():
    t0 = time.monotonic()
    with pytest.raises(RankFailed) as err:
        run_distributed_test(_rank1_raises_rank0_hangs, world_size=2, grace=2.0)
    msg = str(err.value)
    assert "rank 1 raised:" in msg and "ValueError: boom on rank 1" in msg
    assert "in _rank1_raises_rank0_hangs" in msg  # the traceback, not only the message
    assert "rank 0 was still running" in msg and "killed" in msg
    assert time.monotonic() - t0 < 60


def _rank0_dies() -> int:
    import torch.distributed as dist

    if dist.get_rank() == 0:
        os._exit(7)  # dies without a Python exception
    return 1


def test_dead_rank_and_timeout_are_reported():
    with pytest.raises(RankFailed, match=r"rank 0 died \(exit status 7\)"):
        run_distributed_test(_rank0_dies, world_size=2, grace=5.0)
