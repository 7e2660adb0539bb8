"""In-process multi-rank tests: `run_distributed_test(fn, world_size=2)` runs `fn` on N spawned ranks.

Modelled on OLMo-core's helper of the same name. The test process spawns `world_size` fresh interpreters
(torch.multiprocessing, start method "spawn": nothing of the parent's torch state is inherited), gives each
the environment a launcher would (MASTER_ADDR=127.0.0.1, one free MASTER_PORT, RANK, LOCAL_RANK, WORLD_SIZE,
LOCAL_WORLD_SIZE, gloo pinned to the loopback interface), starts the gloo process group (unless
`init_process_group=False`: then `fn` starts it, e.g. through the engine's own `prealign_scale.dist`), and
calls ``fn(*func_args)``. `fn` must be a module-level function (spawn pickles it by name).

Clean teardown, always: after `fn` (returned or raised) each rank runs a barrier (only when every rank got
that far: a failed rank skips it) and destroys every process group, then leaves with ``os._exit``. A
process group or a C++ thread left alive at interpreter exit is what aborts a rank with SIGABRT,
"terminate called without an active exception"; ``os._exit`` after the teardown skips the interpreter's
finalisers, so a rank that finished its work cannot die at exit.

The parent joins with a deadline (`timeout`): when a rank fails, the others get `grace` seconds to fail
too (gloo peers notice a dead rank at once), then every rank still alive is killed. A failing rank's
exception and traceback are raised in the test as `RankFailed`; otherwise the per-rank return values come
back as a list (they must pickle).
"""

from __future__ import annotations

import os
import pickle
import socket
import sys
import tempfile
import time
import traceback
from datetime import timedelta
from pathlib import Path

# What every CPU rank of the test suite runs with (the same as a launcher's environment in STACK.md).
RANK_ENV = {"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo",
            "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}


class RankFailed(AssertionError):
    """A rank raised, died or hung; the message holds each failing rank's traceback or exit status."""


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _write(path: Path, record: dict) -> None:
    """Write a rank's outcome atomically (the parent reads only whole files)."""
    try:
        data = pickle.dumps(record)
    except Exception as exc:  # noqa: BLE001 - an unpicklable return value is a test error, reported as such
        data = pickle.dumps({"ok": False, "error": f"the return value does not pickle: {exc!r}"})
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.rename(path)


def _teardown(ok: bool, timeout_s: float) -> str | None:
    """Barrier (when this rank succeeded) and destroy every process group; returns a problem, or None."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return None
    problem = None
    if ok:
        try:  # every rank finished fn before any destroys its groups; a peer that failed makes this fail fast
            dist.monitored_barrier(timeout=timedelta(seconds=timeout_s)) if dist.get_backend() == "gloo" \
                else dist.barrier()
        except Exception as exc:  # noqa: BLE001 - reported to the test
            problem = f"teardown barrier failed: {exc!r}"
    try:
        dist.destroy_process_group()  # the default group and every subgroup (megatron's, DeepSpeed's)
    except Exception as exc:  # noqa: BLE001 - reported to the test
        problem = problem or f"destroy_process_group failed: {exc!r}"
    return problem


def _rank_main(rank: int, world_size: int, port: int, backend: str, init: bool, env: dict, fn, func_args: tuple,
               result_dir: str, timeout_s: float) -> None:
    """The body of one spawned rank (torch.multiprocessing passes `rank` first)."""
    os.environ.update(RANK_ENV)
    os.environ.update({k: str(v) for k, v in env.items()})
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_WORLD_SIZE=str(world_size))
    record: dict
    try:
        if init:
            import torch.distributed as dist

            dist.init_process_group(backend, rank=rank, world_size=world_size,
                                    timeout=timedelta(seconds=timeout_s))
        record = {"ok": True, "result": fn(*func_args)}
    except BaseException as exc:  # noqa: BLE001 - every failure goes back to the test, with its traceback
        record = {"ok": False, "error": "".join(traceback.format_exception(exc))}
    problem = _teardown(record["ok"], timeout_s)
    if problem and record["ok"]:
        record = {"ok": False, "error": problem}
    _write(Path(result_dir) / f"rank{rank}.pkl", record)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0 if record["ok"] else 1)  # no interpreter finalisers: nothing can abort after the teardown


def run_distributed_test(fn, world_size: int = 2, backend: str = "gloo", start_method: str = "spawn",
                         func_args: tuple = (), *, init_process_group: bool = True, env: dict | None = None,
                         timeout: float = 600.0, grace: float = 30.0) -> list:
    """Run ``fn(*func_args)`` on `world_size` spawned ranks; returns each rank's return value, by rank.

    Raises `RankFailed` naming every rank that raised (with its traceback), died (exit status or signal),
    or was still running at `timeout` seconds (it is killed).
    """
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory(prefix="dist_test_") as result_dir:
        ctx = mp.start_processes(_rank_main, nprocs=world_size, join=False, start_method=start_method,
                                 args=(world_size, free_port(), backend, init_process_group, dict(env or {}), fn,
                                       tuple(func_args), result_dir, timeout))
        procs = ctx.processes
        deadline, first_failure = time.monotonic() + timeout, None
        while any(p.is_alive() for p in procs):
            now = time.monotonic()
            if first_failure is None and any(p.exitcode not in (None, 0) for p in procs):
                first_failure = now
            if now > deadline or (first_failure is not None and now > first_failure + grace):
                break
            time.sleep(0.05)
        hung = [r for r, p in enumerate(procs) if p.is_alive()]
        for r in hung:  # stragglers: killed, never left behind
            procs[r].kill()
        for p in procs:
            p.join(timeout=30)

        results, problems = [], []
        for r, p in enumerate(procs):
            path = Path(result_dir) / f"rank{r}.pkl"
            record = pickle.loads(path.read_bytes()) if path.is_file() else None
            if record is not None and record["ok"] and p.exitcode == 0:
                results.append(record["result"])
                continue
            results.append(None)
            if record is not None and not record["ok"]:
                problems.append(f"rank {r} raised:\n{record['error']}")
            elif r in hung:
                problems.append(f"rank {r} was still running after {timeout if first_failure is None else grace} s "
                                "and was killed")
            else:
                code = p.exitcode
                why = f"signal {-code}" if code is not None and code < 0 else f"exit status {code}"
                problems.append(f"rank {r} died ({why}) without reporting a result")
        if problems:
            raise RankFailed("\n".join(problems))
        return results
