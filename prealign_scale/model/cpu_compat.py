"""The CPU accommodations megatron-core needs (STACK.md), in one place, applied only when CUDA is absent.

megatron-core 0.16 assumes a GPU in two places that the CPU development and test setup reaches:

1. ``torch.cuda.current_device()`` as a device argument in forward (the global attention memory buffer,
   RoPE moving ``inv_freq``). On a CPU build of torch it raises "Torch not compiled with CUDA enabled".
   The accommodation wraps ``torch.cuda.current_device`` so that, *while CUDA is unavailable*, it returns
   ``torch.device("cpu")``; with CUDA available the wrapper calls the original, so nothing changes on GPU.
   It has to be process-wide because megatron looks the function up as ``torch.cuda.current_device`` at
   call time in dozens of modules; a CPU device is a valid argument wherever megatron passes it as
   ``device=`` or ``.to(...)``. Code that builds ``f"cuda:{...}"`` strings only runs on GPU paths.
2. ``tensor_parallel.model_parallel_cuda_manual_seed`` calls ``torch.cuda.manual_seed`` and forks CUDA RNG
   states. On CPU we install megatron's inference RNG tracker instead (`seed_megatron_rng_cpu`): its
   ``fork()`` is a no-op context, which is exact for our models (dropout is 0) and lets megatron's
   ``get_cuda_rng_tracker().fork()`` calls run. Weights are initialised on CPU from torch's default
   generator (``use_cpu_initialization=True``), seeded by `torch.manual_seed`.

Call `apply_cpu_accommodations()` before building or running a megatron model; it is idempotent and a
no-op when CUDA is available.
"""

from __future__ import annotations

import functools

import torch

_MARK = "_prealign_cpu_accommodation"


def cuda_available() -> bool:
    return torch.cuda.is_available()


def apply_cpu_accommodations() -> bool:
    """Patch ``torch.cuda.current_device`` for CPU-only runs. Returns True when the patch is (now) active.

    Idempotent: a second call finds the marked wrapper and does nothing. A no-op (returns False) when CUDA
    is available.
    """
    if cuda_available():
        return False
    current = torch.cuda.current_device
    if getattr(current, _MARK, False):
        return True

    original = current

    @functools.wraps(original)
    def current_device():  # type: ignore[no-untyped-def]
        if torch.cuda.is_available():
            return original()
        return torch.device("cpu")

    setattr(current_device, _MARK, True)
    current_device.__wrapped_original__ = original  # type: ignore[attr-defined]
    torch.cuda.current_device = current_device
    return True


def cpu_accommodations_active() -> bool:
    return bool(getattr(torch.cuda.current_device, _MARK, False))


def seed_megatron_rng_cpu(seed: int) -> None:
    """CPU replacement for ``tensor_parallel.model_parallel_cuda_manual_seed(seed)``.

    Seeds torch's default (CPU) generator with `seed` on every rank (so data-parallel replicas initialise
    identically, and tensor-parallel ranks split one identical CPU master weight) and installs megatron's
    inference RNG tracker, whose ``fork()`` is a no-op.
    """
    from megatron.core import tensor_parallel

    torch.manual_seed(seed)
    tensor_parallel.random.initialize_rng_tracker(inference_rng_tracker=True, force_reset=True)
