"""Shared measurement for the kernel benchmarks: peak memory and best time of a step, in a fresh process.

CPU peak memory = the resident high-water mark (VmHWM) above the baseline once the inputs exist, with
glibc's mmap threshold fixed so that freed buffers go back to the OS (so VmHWM tracks live tensors);
CUDA peak memory = torch's max_memory_allocated above the baseline.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure(step, repeats: int, device) -> tuple[float, int, float]:
    """Run `step()` repeats + 1 times; the first full-size pass pays page faults / allocator growth, so it
    counts for memory only. Returns (best seconds, peak bytes above the baseline, last step's value)."""
    import torch

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        base = rss_kib("VmRSS") * 1024
    times, value = [], None
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        value = step()
        if cuda:
            torch.cuda.synchronize()
        if i > 0:
            times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() if cuda else rss_kib("VmHWM") * 1024) - base
    return min(times), int(peak), value


def run_worker(script: str, impl: str, flags: dict, threads: int) -> dict:
    """Run `script --worker impl --k=v ...` in a fresh process; parse its `RESULT {json}` line."""
    cmd = [sys.executable, script, "--worker", impl] + [f"--{k}={v}" for k, v in flags.items()]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=str(threads), MALLOC_MMAP_THRESHOLD_="65536")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not line:
        return {"impl": impl, "error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(line[0][7:])
