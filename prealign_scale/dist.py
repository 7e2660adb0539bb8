"""Rank discovery, process-group start, and the sum over a group the phases share: the only module that
reads rank environment variables.

Supported launchers (first match wins):

1. torchrun / the ``deepspeed`` launcher / ``srun ... torchrun``: RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR,
   MASTER_PORT are already set.
2. Open MPI (``mpirun -np N``): OMPI_COMM_WORLD_RANK / _LOCAL_RANK / _SIZE / _LOCAL_SIZE. When every rank is
   on this host the master is 127.0.0.1; otherwise rank 0's host name is broadcast with mpi4py. A missing
   MASTER_PORT is chosen free by rank 0 and broadcast too. (DeepSpeed's own MPI discovery would take the
   first address of ``hostname -I`` and force port 29500: STACK.md.)
3. SLURM (``srun python ...``): SLURM_PROCID / SLURM_LOCALID / SLURM_NTASKS; the master is the first host of
   SLURM_JOB_NODELIST (``scontrol show hostnames``; a plain parse when scontrol is absent), or 127.0.0.1 on a
   single node; the port is MASTER_PORT or derived from SLURM_JOB_ID so that every task agrees.
4. Nothing: a single process (rank 0 of 1) on 127.0.0.1 with a free port.

`discover()` writes the result back to RANK / LOCAL_RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT, so
torch.distributed and DeepSpeed read one consistent view. Loopback safety: when all ranks are local and the
master is a loopback address, gloo is pinned to the ``lo`` interface (GLOO_SOCKET_IFNAME), unless set.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from dataclasses import dataclass
from datetime import timedelta

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class DistEnv:
    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    master_addr: str
    master_port: int
    launcher: str  # "env" (torchrun/deepspeed), "mpi", "slurm" or "single"

    @property
    def all_local(self) -> bool:
        return self.local_world_size == self.world_size


def free_port() -> int:
    """A TCP port that is free on this host right now (bound to 127.0.0.1 and released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def _int(name: str, env: dict) -> int:
    try:
        return int(env[name])
    except (KeyError, ValueError):
        raise RuntimeError(f"rank discovery: environment variable {name}={env.get(name)!r} is not an integer") from None


def first_slurm_host(nodelist: str) -> str:
    """First host of a SLURM node list: ``scontrol show hostnames`` when available, else a plain parse.

    The parse handles ``node1,node2`` and ``gpu[03-05,07],cpu1`` (the first range's start, zero padding kept).
    """
    if shutil.which("scontrol"):
        try:
            out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                                 timeout=30, check=True).stdout.split()
            if out:
                return out[0]
        except (subprocess.SubprocessError, OSError):
            pass
    m = re.match(r"([^,\[]+)(?:\[([^\],]+))?", nodelist.strip())
    if not m:
        raise RuntimeError(f"rank discovery: cannot parse SLURM node list {nodelist!r}")
    prefix, first = m.group(1), m.group(2)
    return prefix if first is None else prefix + first.split("-")[0]


def _from_mpi(env: dict) -> tuple[int, int, int, int, str, int]:
    rank, size = _int("OMPI_COMM_WORLD_RANK", env), _int("OMPI_COMM_WORLD_SIZE", env)
    local_rank = _int("OMPI_COMM_WORLD_LOCAL_RANK", env)
    local_size = _int("OMPI_COMM_WORLD_LOCAL_SIZE", env)
    addr, port = env.get("MASTER_ADDR"), env.get("MASTER_PORT")
    if addr is None or port is None:
        from mpi4py import MPI  # imported only under mpirun: MPI_Init is not free

        comm = MPI.COMM_WORLD
        if addr is None:
            addr = LOOPBACK if local_size == size else comm.bcast(socket.gethostname() if rank == 0 else None)
        if port is None:
            port = comm.bcast(free_port() if rank == 0 else None)
    return rank, local_rank, size, local_size, addr, int(port)


def _from_slurm(env: dict) -> tuple[int, int, int, int, str, int]:
    rank, size = _int("SLURM_PROCID", env), _int("SLURM_NTASKS", env)
    local_rank = _int("SLURM_LOCALID", env)
    nnodes = int(env.get("SLURM_JOB_NUM_NODES", env.get("SLURM_NNODES", "1")))
    # SLURM_TASKS_PER_NODE looks like "4(x2)" or "4,3": the first number is this layout's per-node count.
    per_node = re.match(r"\d+", env.get("SLURM_TASKS_PER_NODE", str(size)))
    local_size = size if nnodes == 1 else int(per_node.group(0)) if per_node else 1
    nodelist = env.get("SLURM_JOB_NODELIST", env.get("SLURM_NODELIST", ""))
    addr = env.get("MASTER_ADDR") or (LOOPBACK if nnodes == 1 or not nodelist else first_slurm_host(nodelist))
    port = int(env.get("MASTER_PORT") or 20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000)
    return rank, local_rank, size, local_size, addr, port


def discover(env: dict | None = None, *, export: bool = True) -> DistEnv:
    """Find this process's rank, world and master; write them to os.environ when `export` (the default)."""
    env = dict(os.environ) if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        launcher = "env"
        rank, size = _int("RANK", env), _int("WORLD_SIZE", env)
        local_rank = int(env.get("LOCAL_RANK", "0"))
        # torchrun exports LOCAL_WORLD_SIZE, the deepspeed launcher LOCAL_SIZE.
        local_size = int(env.get("LOCAL_WORLD_SIZE") or env.get("LOCAL_SIZE") or _guess_local_size(env, size))
        addr, port = env.get("MASTER_ADDR", LOOPBACK), int(env.get("MASTER_PORT", "29500"))
    elif "OMPI_COMM_WORLD_SIZE" in env:
        launcher = "mpi"
        rank, local_rank, size, local_size, addr, port = _from_mpi(env)
    elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        launcher = "slurm"
        rank, local_rank, size, local_size, addr, port = _from_slurm(env)
    else:
        launcher = "single"
        rank, local_rank, size, local_size = 0, 0, 1, 1
        addr, port = env.get("MASTER_ADDR", LOOPBACK), int(env.get("MASTER_PORT") or free_port())
    if not 0 <= rank < size:
        raise RuntimeError(f"rank discovery ({launcher}): rank {rank} is outside the world size {size}")
    info = DistEnv(rank, local_rank, size, local_size, addr, port, launcher)
    if export:
        os.environ.update(RANK=str(rank), LOCAL_RANK=str(local_rank), WORLD_SIZE=str(size),
                          LOCAL_WORLD_SIZE=str(local_size), MASTER_ADDR=addr, MASTER_PORT=str(port))
        if info.all_local and _is_loopback(addr):
            os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    return info


def _guess_local_size(env: dict, size: int) -> int:
    """Neither count exported: a loopback master means every rank is on this host."""
    return size if _is_loopback(env.get("MASTER_ADDR", LOOPBACK)) else 1


def _is_loopback(addr: str) -> bool:
    if addr in ("localhost", "::1") or addr.startswith("127."):
        return True
    try:
        return socket.gethostbyname(addr).startswith("127.")
    except OSError:
        return False


def use_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def prepare_accelerator() -> None:
    """On a machine without CUDA, make DeepSpeed use its CPU accelerator (before deepspeed is imported)."""
    if not use_cuda():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def disable_deepspeed_shm_allreduce() -> None:
    """Keep DeepSpeed's CPU backend from building and starting its shared-memory all-reduce op.

    On the CPU accelerator DeepSpeed's TorchBackend JIT-compiles ``deepspeed_shm_comm`` (minutes on a fresh
    machine) and each rank creates a 64 MiB ``/dev/shm/deepspeed_allreduce_buffer_<uid>_<addr>_<port>_<rank>``
    that is never unlinked: every CPU run, and every killed one, leaks it (a day of test runs filled a 24 GB
    machine's RAM). The op serves only ``inference_all_reduce``, which training never calls; all collectives
    here go through torch.distributed (gloo). Call before ``deepspeed.init_distributed``.
    """
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def cuda_device_index(local_rank: int, visible_devices: int) -> int:
    """The GPU a rank drives: its local rank modulo the devices it can see.

    With every GPU of a node visible (torchrun, deepspeed, mpirun) that is the local rank; under
    ``srun --gpus-per-task=1`` (or any per-rank ``CUDA_VISIBLE_DEVICES``) each rank sees one device, index 0.
    """
    if visible_devices < 1:
        raise RuntimeError(f"rank with local rank {local_rank} wants CUDA but no device is visible "
                           f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})")
    return local_rank % visible_devices


def init_process_group(info: DistEnv, timeout_minutes: float = 30.0, backend: str | None = None) -> None:
    """Start torch.distributed through DeepSpeed (gloo on CPU, nccl on GPU) with the given timeout."""
    import torch

    prepare_accelerator()
    import deepspeed

    if backend is None:
        backend = "nccl" if use_cuda() else "gloo"
    if not use_cuda():
        disable_deepspeed_shm_allreduce()
    if use_cuda():
        torch.cuda.set_device(cuda_device_index(info.local_rank, torch.cuda.device_count()))
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, distributed_port=info.master_port,
                               timeout=timedelta(minutes=timeout_minutes), rank=info.rank,
                               world_size=info.world_size)


def set_collective_timeout(minutes: float) -> int:
    """Give every process group created so far the collective timeout `minutes`; returns how many groups.

    `init_process_group` sets it on the world group only: the groups megatron creates use its own default
    (30 minutes) and `torch.distributed.new_group` the backend's. Call this after creating groups
    (megatron's model parallelism, DeepSpeed's engine), so that a stalled rank makes every other rank fail
    after `dist.timeout_minutes` in whatever group it waits. (A rank that dies closes its sockets: gloo's
    peers fail at once, without waiting for the timeout.)
    """
    import torch.distributed as dist
    from torch.distributed import distributed_c10d as c10d

    if not dist.is_initialized():
        return 0
    if not hasattr(c10d, "_set_pg_timeout"):  # private torch API (2.2+): keep the defaults rather than fail
        import warnings

        warnings.warn("this torch cannot change a process group's timeout; dist.timeout_minutes applies to the "
                      "world group only", stacklevel=2)
        return 0
    timeout = timedelta(minutes=minutes)
    groups = [g for g in list(c10d._world.pg_map) if not c10d._rank_not_in_group(g)]
    for group in groups:
        c10d._set_pg_timeout(timeout, group)
    return len(groups)


def shutdown() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t, group=None):
    """Sum of the tensor `t` over the process group (a new tensor; `t` is not modified)."""
    import torch.distributed as dist

    out = t.detach().clone()
    dist.all_reduce(out, group=group)
    return out
