"""Model parallelism through megatron-core's `parallel_state`, and its groups in the shape DeepSpeed wants.

The caller starts ``torch.distributed`` (the `dist` room); `init_model_parallel` then carves the world into
tensor-parallel (TP) groups of `tensor_parallel_size` consecutive ranks and data-parallel (DP) groups across
them, and seeds megatron's RNG. Pipeline and context parallelism are not used (size 1).

DeepSpeed must partition ZeRO-3 state over the DP group only (each TP rank holds a different shard of a
weight already): pass ``mpu=MegatronMPU()`` to ``deepspeed.initialize`` and
``data_parallel_group=dp_group()`` (and ``mpu``) to ``deepspeed.zero.Init`` (the builder does the latter).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from prealign_scale.model.cpu_compat import apply_cpu_accommodations, cuda_available, seed_megatron_rng_cpu


def init_model_parallel(tensor_parallel_size: int = 1, seed: int = 1234) -> None:
    """Create megatron's process groups (TP x DP) and seed its RNG. torch.distributed must be initialised.

    CUDA: ``torch.manual_seed(seed)`` then ``model_parallel_cuda_manual_seed(seed)`` (per-TP-rank CUDA
    streams for tensor-parallel init and dropout). CPU: the accommodations of `cpu_compat` (same seed on
    every rank, no-op RNG tracker). Calling it again with the same size is allowed (groups are rebuilt).
    """
    from megatron.core import parallel_state, tensor_parallel

    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("init_model_parallel: torch.distributed is not initialised; start the process group "
                           "first (prealign_scale.dist), then call init_model_parallel")
    world = dist.get_world_size()
    if not isinstance(tensor_parallel_size, int) or tensor_parallel_size < 1 or world % tensor_parallel_size:
        raise ValueError(f"init_model_parallel: tensor_parallel_size={tensor_parallel_size!r} must be a positive "
                         f"int dividing the world size {world}")
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if not cuda_available():
        apply_cpu_accommodations()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=tensor_parallel_size,
        pipeline_model_parallel_size=1,
        create_gloo_process_groups=False,
    )
    if cuda_available():
        torch.manual_seed(seed)
        tensor_parallel.model_parallel_cuda_manual_seed(seed)
    else:
        seed_megatron_rng_cpu(seed)


def destroy_model_parallel() -> None:
    """Tear down megatron's groups (a no-op when they do not exist). Does not destroy the world group."""
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()


def model_parallel_is_initialized() -> bool:
    from megatron.core import parallel_state

    return parallel_state.model_parallel_is_initialized()


def _ps():
    from megatron.core import parallel_state

    if not parallel_state.model_parallel_is_initialized():
        raise RuntimeError("megatron model parallelism is not initialised: call "
                           "prealign_scale.model.parallel.init_model_parallel first")
    return parallel_state


def dp_group() -> dist.ProcessGroup:
    """The data-parallel group of this rank (ranks holding the same TP shard)."""
    return _ps().get_data_parallel_group()


def dp_rank() -> int:
    return _ps().get_data_parallel_rank()


def dp_world_size() -> int:
    return _ps().get_data_parallel_world_size()


def tp_group() -> dist.ProcessGroup:
    """The tensor-parallel group of this rank."""
    return _ps().get_tensor_model_parallel_group()


def tp_rank() -> int:
    return _ps().get_tensor_model_parallel_rank()


def tp_world_size() -> int:
    return _ps().get_tensor_model_parallel_world_size()


class MegatronMPU:
    """megatron's groups behind the ``mpu`` interface that DeepSpeed calls (``deepspeed.initialize(mpu=...)``,
    ``deepspeed.zero.Init(mpu=...)``).

    Methods are the ones DeepSpeed 0.19 calls on an mpu (engine, ZeRO stages 1-3, utils.groups, gradient
    norm). "Model parallel" in DeepSpeed means tensor parallel here (no pipeline parallelism). It deliberately
    has no ``initialize_sequence_parallel``: DeepSpeed takes that attribute to mean its own Ulysses mpu and then
    ignores our groups.
    """

    # Data parallel.
    def get_data_parallel_group(self) -> dist.ProcessGroup:
        return dp_group()

    def get_data_parallel_rank(self) -> int:
        return dp_rank()

    def get_data_parallel_world_size(self) -> int:
        return dp_world_size()

    def get_data_parallel_group_ranks(self) -> list[int]:
        return list(dist.get_process_group_ranks(dp_group()))

    # Model (= tensor) parallel.
    def get_model_parallel_group(self) -> dist.ProcessGroup:
        return tp_group()

    def get_model_parallel_rank(self) -> int:
        return tp_rank()

    def get_model_parallel_world_size(self) -> int:
        return tp_world_size()

    def get_tensor_model_parallel_group(self) -> dist.ProcessGroup:
        return tp_group()

    def get_tensor_model_parallel_rank(self) -> int:
        return tp_rank()

    def get_tensor_model_parallel_world_size(self) -> int:
        return tp_world_size()

    def get_tensor_model_parallel_src_rank(self) -> int:
        return _ps().get_tensor_model_parallel_src_rank()

    # Pipeline parallel: always a single stage.
    def get_pipeline_model_parallel_rank(self) -> int:
        return 0

    def get_pipeline_model_parallel_world_size(self) -> int:
        return 1

    def get_pipeline_model_parallel_group(self) -> dist.ProcessGroup:
        return _ps().get_pipeline_model_parallel_group()
