"""Fixtures shared by several test files.

Helper modules of the suite are imported by plain name: pyproject's ``[tool.pytest.ini_options] pythonpath``
puts the repository root, ``tests/`` (distributed.py, kjv_sample.py, eval_tiny.py) and ``tests/dist_scripts/``
(engine_common.py, tiny_data.py, fault_common.py) on sys.path, for ``python -m pytest`` from the repository
root and for ``make test`` alike. Scripts that tests start as subprocesses get the repository root through
PYTHONPATH (engine_common.cpu_env).
"""

from __future__ import annotations

import pytest
import torch.distributed as dist

from prealign_scale.dist import free_port


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> dict:
    """The tiny English-Clone data set of the engine tests (tests/dist_scripts/tiny_data.py), built once per
    session: tokenizer, alignment table and 4 shards. Read-only: a test that damages data copies it first."""
    from tiny_data import build_tiny_data

    return build_tiny_data(tmp_path_factory.mktemp("tiny_data"))


@pytest.fixture(scope="module")
def world1():
    """A world-1 gloo process group in this process, with megatron's groups (TP=1, DP=1, seed 1234);
    torn down after the module (unless a group was already running)."""
    from prealign_scale.model.parallel import destroy_model_parallel, init_model_parallel

    created = not dist.is_initialized()
    if created:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    init_model_parallel(1, seed=1234)
    yield
    if created:
        destroy_model_parallel()
        dist.destroy_process_group()
