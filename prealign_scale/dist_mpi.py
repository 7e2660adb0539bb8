"""MPI rank discovery for offline tools (mpi4py), and a no-MPI fallback with the same interface.

Offline data tools (the shard builder) split work across ranks started by ``mpirun`` or ``srun --mpi=pmix``.
They need no torch process group: mpi4py's communicator gives rank, size, barrier and broadcast. Outside MPI
(no launcher variables present) a single-rank stand-in is used, so the same code runs everywhere.

Plain ``srun`` (no ``--mpi=pmix``) starts N copies of the program without any MPI variables: each copy would
be a single-rank world and all of them would do the whole job at once. :func:`mpi_world` refuses that
(:class:`LauncherError`) instead of guessing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Variables that MPI launchers set; mpi4py is imported only when one is present (importing it outside a
# launcher would initialise a singleton MPI world, which is slow and noisy).
MPI_ENV_MARKERS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MV2_COMM_WORLD_SIZE")


class LauncherError(RuntimeError):
    """Started by a launcher that gives several tasks but no MPI world (plain ``srun``)."""


def under_mpi_launcher(env: Mapping[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    return any(v in env for v in MPI_ENV_MARKERS)


def slurm_step_tasks(env: Mapping[str, str] | None = None) -> int:
    """Number of tasks of the SLURM job step this process belongs to (1 outside ``srun``).

    ``SLURM_STEP_NUM_TASKS`` is set by ``srun`` only. ``SLURM_NTASKS`` alone is not enough: a batch script of
    an ``--ntasks=8`` allocation sees ``SLURM_NTASKS=8`` but is one process; it counts only inside a step
    (``SLURM_STEP_ID`` set), for SLURM versions that do not set ``SLURM_STEP_NUM_TASKS``.
    """
    env = os.environ if env is None else env
    if "SLURM_STEP_NUM_TASKS" in env:
        value = env["SLURM_STEP_NUM_TASKS"]
    elif "SLURM_STEP_ID" in env or "SLURM_STEPID" in env:
        value = env.get("SLURM_NTASKS", "1")
    else:
        return 1
    try:
        return int(value)
    except ValueError:
        return 1


def check_launcher(env: Mapping[str, str] | None = None) -> None:
    """Raise LauncherError when ``srun`` started several tasks that would not form an MPI world."""
    env = os.environ if env is None else env
    n = slurm_step_tasks(env)
    if n > 1 and not under_mpi_launcher(env):
        raise LauncherError(
            f"started as one of {n} srun tasks without MPI (no {'/'.join(MPI_ENV_MARKERS)} variable): every "
            "task would build everything on its own. Use `srun --mpi=pmix ...` (or pmi2), `mpirun -np N ...`, "
            "or run one task (`srun -n 1`)"
        )


@dataclass
class World:
    rank: int
    size: int
    comm: Any = None  # mpi4py communicator, or None for a single process

    def barrier(self) -> None:
        if self.comm is not None:
            self.comm.Barrier()

    def bcast(self, obj, root: int = 0):
        return self.comm.bcast(obj, root=root) if self.comm is not None else obj

    def allreduce_max(self, value):
        if self.comm is None:
            return value
        from mpi4py import MPI

        return self.comm.allreduce(value, op=MPI.MAX)


def mpi_world(use_mpi: bool | None = None) -> World:
    """The MPI world when started by an MPI launcher (or when use_mpi=True), else a single-rank world.

    With use_mpi=None, raises LauncherError under plain multi-task ``srun`` (see :func:`check_launcher`).
    """
    if use_mpi is None:
        check_launcher()
        use_mpi = under_mpi_launcher()
    if not use_mpi:
        return World(0, 1, None)
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    return World(comm.Get_rank(), comm.Get_size(), comm if comm.Get_size() > 1 else None)
