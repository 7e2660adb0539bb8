"""MPI rank discovery for offline tools (mpi4py), and a no-MPI fallback with the same interface.

Offline data tools (the shard builder) split work across ranks started by ``mpirun`` or ``srun --mpi=pmix``.
They need no torch process group: mpi4py's communicator gives rank, size, barrier and broadcast. Outside MPI
(no launcher variables present) a single-rank stand-in is used, so the same code runs everywhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

# Variables that MPI launchers set; mpi4py is imported only when one is present (importing it outside a
# launcher would initialise a singleton MPI world, which is slow and noisy).
MPI_ENV_MARKERS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MV2_COMM_WORLD_SIZE")


def under_mpi_launcher() -> bool:
    return any(v in os.environ for v in MPI_ENV_MARKERS)


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
    """The MPI world when started by an MPI launcher (or when use_mpi=True), else a single-rank world."""
    if use_mpi is None:
        use_mpi = under_mpi_launcher()
    if not use_mpi:
        return World(0, 1, None)
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    return World(comm.Get_rank(), comm.Get_size(), comm if comm.Get_size() > 1 else None)
