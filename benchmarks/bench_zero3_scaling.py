"""ZeRO-3 scaling on CPU ranks (issue 12 item 2): per-rank model-state memory and step time vs rank count.

Every run starts `--ranks` fresh processes (gloo, DeepSpeed's CPU accelerator), each building the project's
megatron-core `GPTModel` partitioned by `build_gpt_model(..., ds_config=...)` (zero.Init over megatron's
data-parallel group) and wrapping it with `deepspeed.initialize` exactly as `engine/deepspeed_setup.py`
`build_engine` does (its `param_groups`, `MegatronMPU`). Batches are random token ids with a causal mask; the
loss is the mean token loss. Two measurements:

memory   the 150m preset (vocab 50304), a few steps at micro-batch 1 x seq 64, in the layout the planner
         models (ds_configs/gpu_zero3_bf16.json: bf16 weights, ``grad_accum_dtype`` fp32; on CPU with
         torch's AdamW and the CPU config's 5e7-element buckets). After the last step each rank reads the sizes
         of what DeepSpeed really allocated:
           params     sum of every parameter's ZeRO-3 partition, ``p.ds_tensor`` (padded to a multiple of the
                      rank count; the whole copies that parameters under
                      ``stage3_param_persistence_threshold`` also keep, 25 x 768 norm weights in 150m, are not
                      counted)
           grads      the optimizer's ``grad_partitions_flat_buffer`` (fp32)
           optimizer  the fp32 master partitions (``fp32_partitioned_groups_flat``; counted once where
                      one shares the weight partition's storage) + every tensor of the inner
                      optimizer's state (Adam exp_avg, exp_avg_sq)
         plus the process's resident memory (VmRSS, VmHWM) for scale. Compared with DeepSpeed's
         ``estimate_zero3_model_states_mem_needs`` (total and largest-layer counts taken from the built model,
         as ``..._all_live`` does) and with `prealign_scale.launch.plan.zero3_model_state_bytes`.
time     synth-3m and synth-36m (vocab 16384) with ds_configs/cpu_zero3.json (fp32, the project's CPU config),
         micro-batch `--micro` x seq `--seq` per rank (weak scaling: the global batch grows with the ranks),
         median of the steps after one warm-up. Communication = wall time inside torch.distributed's
         collectives (all_gather_into_tensor, reduce_scatter, all_reduce, broadcast, ...), patched before
         DeepSpeed binds them; an async collective is waited for inside the timer, so each one is timed until
         its result exists (this includes waiting for the slowest rank). Compute = step time - communication.
         DeepSpeed's own ``comms_logger`` is not used: on CPU its "synchronize" is a no-op, so it would time
         only the launch of the async all-gathers.

Usage: python benchmarks/bench_zero3_scaling.py [--only memory|time] [--ranks 1,2,4]
Writes benchmarks/results/zero3_scaling_cpu.json and benchmarks/results/zero3_scaling_cpu.png.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULT = ROOT / "benchmarks/results/zero3_scaling_cpu.json"
PLOT = ROOT / "benchmarks/results/zero3_scaling_cpu.png"
MEMORY_PRESET, MEMORY_VOCAB = "150m", 50304
TIME_PRESETS, TIME_VOCAB = ("synth-3m", "synth-36m"), 16384

# The collectives DeepSpeed's TorchBackend may call (it binds them when deepspeed.comm starts).
COLLECTIVES = ("all_gather_into_tensor", "_all_gather_base", "all_gather", "reduce_scatter_tensor",
               "_reduce_scatter_base", "reduce_scatter", "all_reduce", "broadcast", "all_to_all_single",
               "reduce", "gather", "scatter", "all_gather_coalesced", "all_reduce_coalesced")


# --------------------------------------------------------------------------------------------- one rank
class CommTimer:
    """Wall time spent inside torch.distributed collectives (outermost calls only), per op name."""

    def __init__(self):
        import torch.distributed as dist

        self.seconds, self.calls, self.depth = {}, {}, 0
        for name in COLLECTIVES:
            fn = getattr(dist, name, None)
            if fn is not None:
                setattr(dist, name, self._wrap(name, fn))

    def _wrap(self, name, fn):
        def timed(*args, **kwargs):
            if self.depth:  # a collective implemented with another one: count the outer call only
                return fn(*args, **kwargs)
            self.depth += 1
            t0 = time.perf_counter()
            try:
                work = fn(*args, **kwargs)
                if kwargs.get("async_op") and work is not None:
                    work.wait()
                return work
            finally:
                self.depth -= 1
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
                self.calls[name] = self.calls.get(name, 0) + 1

        return timed

    def reset(self) -> None:
        self.seconds, self.calls = {}, {}

    def total(self) -> float:
        return sum(self.seconds.values())


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


def _nbytes(t) -> int:
    return t.numel() * t.element_size()


def measured_model_states(engine) -> dict:
    """Bytes of this rank's ZeRO-3 partitions, read from the engine (see the module docstring)."""
    model, zero = engine.module, engine.optimizer
    params = sum(_nbytes(p.ds_tensor) for p in model.parameters())
    grads = _nbytes(zero.grad_partitions_flat_buffer)
    # DeepSpeed may use an fp32 weight partition itself as the master copy (same storage): count it once
    weight_flats = {t.data_ptr() for t in zero.fp16_partitioned_groups_flat}
    master = sum(_nbytes(t) for t in zero.fp32_partitioned_groups_flat if t.data_ptr() not in weight_flats)
    moments = sum(_nbytes(v) for state in zero.optimizer.state.values() for v in state.values()
                  if hasattr(v, "numel") and v.numel() > 1)  # not the scalar step counters
    buffers = sum(_nbytes(b.buffer) for b in getattr(zero, "ipg_buckets", {}).values()
                  if getattr(b, "buffer", None) is not None)
    return {"params": params, "grads": grads, "optimizer_master": master, "optimizer_moments": moments,
            "optimizer": master + moments, "model_states": params + grads + master + moments,
            "reduce_buckets": buffers,
            "param_dtype": str(next(model.parameters()).ds_tensor.dtype).replace("torch.", ""),
            "grad_dtype": str(zero.grad_partitions_flat_buffer.dtype).replace("torch.", "")}


def model_counts(model) -> dict:
    """Total parameters and DeepSpeed's "largest layer" (most parameters owned directly by one module)."""
    total = sum(p.ds_numel for p in model.parameters())
    largest = max(sum(p.ds_numel for p in m.parameters(recurse=False)) for m in model.modules())
    return {"total_params": total, "largest_layer_params": largest}


def worker(a) -> None:
    """One rank: build, train `a.steps` steps, write this rank's JSON to `a.out`."""
    threads = max(1, (os.cpu_count() or 1) // a.world)
    import torch

    torch.set_num_threads(threads)
    timer = CommTimer()  # before deepspeed binds torch.distributed's functions
    import deepspeed
    import torch.distributed as dist

    from prealign_scale.data.packed_masks import causal_mask
    from prealign_scale.engine.deepspeed_setup import param_groups
    from prealign_scale.model.builder import build_gpt_model, ds_config_dtype
    from prealign_scale.model.parallel import MegatronMPU, init_model_parallel
    from prealign_scale.model.presets import get_preset

    dist.init_process_group("gloo", rank=a.rank, world_size=a.world)
    init_model_parallel(1, seed=1234)
    ds = json.loads(Path(a.ds_config).read_text())
    ds["optimizer"]["params"].update(torch_adam=True, lr=1e-4, weight_decay=0.1)
    ds["zero_optimization"].update(json.loads(a.zero_overrides))
    ds.update(train_micro_batch_size_per_gpu=a.micro, gradient_accumulation_steps=1,
              train_batch_size=a.micro * a.world, steps_per_print=2**31 - 1)
    dtype = ds_config_dtype(ds)
    t0 = time.perf_counter()
    model = build_gpt_model(get_preset(a.preset), a.vocab, a.seq, ds_config=ds, params_dtype=dtype)
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=param_groups(model, 0.1),
                                           config=copy.deepcopy(ds), mpu=MegatronMPU())
    build_s = time.perf_counter() - t0
    gen = torch.Generator().manual_seed(1000 + a.rank)
    mask = causal_mask(a.micro, a.seq)
    pos = torch.arange(a.seq)[None].expand(a.micro, -1)
    steps = []
    for _ in range(a.steps):
        ids = torch.randint(0, a.vocab, (a.micro, a.seq + 1), generator=gen)
        dist.barrier()
        timer.reset()
        t0 = time.perf_counter()
        per_token = engine(ids[:, :-1], pos, mask, labels=ids[:, 1:])
        loss = per_token.float().mean()
        engine.backward(loss)
        engine.step()
        steps.append({"step_s": time.perf_counter() - t0, "comm_s": timer.total(), "loss": float(loss),
                      "comm_by_op": {k: [timer.calls[k], round(v, 4)] for k, v in timer.seconds.items()}})
    out = {"rank": a.rank, "world": a.world, "threads": threads, "preset": a.preset, "vocab": a.vocab,
           "build_s": build_s, "steps": steps, "counts": model_counts(engine.module),
           "memory": measured_model_states(engine), "vm_rss": _rss_kib("VmRSS") * 1024,
           "vm_hwm": _rss_kib("VmHWM") * 1024}
    Path(a.out).write_text(json.dumps(out))
    dist.barrier()
    dist.destroy_process_group()


# --------------------------------------------------------------------------------------------- the driver
def launch(preset: str, vocab: int, world: int, ds_config: str, zero_overrides: dict, micro: int, seq: int,
           steps: int, timeout: float) -> list[dict]:
    """Run `world` ranks of `worker`; their JSON records, by rank."""
    from prealign_scale.dist import free_port

    env = dict(os.environ, DS_ACCELERATOR="cpu", PYTHONPATH=str(ROOT), MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(free_port()), GLOO_SOCKET_IFNAME="lo", LOCAL_WORLD_SIZE=str(world),
               OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 1) // world)))
    with tempfile.TemporaryDirectory(prefix="zero3_scaling_") as tmp:
        procs = []
        for r in range(world):
            out = Path(tmp) / f"rank{r}.json"
            cmd = [sys.executable, __file__, "--worker", "--rank", str(r), "--world", str(world), "--preset", preset,
                   "--vocab", str(vocab), "--ds-config", ds_config, "--zero-overrides", json.dumps(zero_overrides),
                   "--micro", str(micro), "--seq", str(seq), "--steps", str(steps), "--out", str(out)]
            procs.append((subprocess.Popen(cmd, env=dict(env, RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(world)),
                                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True), out))
        deadline = time.time() + timeout
        errors = []
        for p, _ in procs:
            try:
                _, err = p.communicate(timeout=max(1.0, deadline - time.time()))
            except subprocess.TimeoutExpired:
                p.kill()
                _, err = p.communicate()
                err += "\n(timed out)"
            if p.returncode:
                errors.append(err.strip().splitlines()[-5:])
        if errors:
            raise RuntimeError(f"{preset} x {world} ranks failed: {errors}")
        return [json.loads(out.read_text()) for _, out in procs]


def memory_run(world: int, a) -> dict:
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    from prealign_scale.launch import plan as P
    from prealign_scale.model.presets import get_preset

    ranks = launch(MEMORY_PRESET, MEMORY_VOCAB, world, str(ROOT / "ds_configs/gpu_zero3_bf16.json"),
                   {"reduce_bucket_size": 50_000_000, "stage3_prefetch_bucket_size": 50_000_000,
                    "overlap_comm": False}, micro=1, seq=64, steps=a.memory_steps, timeout=a.timeout)
    preset = get_preset(MEMORY_PRESET)
    counts = ranks[0]["counts"]
    _, ds_gpu, ds_largest = estimate_zero3_model_states_mem_needs(
        counts["total_params"], counts["largest_layer_params"], num_gpus_per_node=world, num_nodes=1,
        cpu_offload=False)
    planner = P.zero3_model_state_bytes(preset.num_params(MEMORY_VOCAB),
                                        P.largest_layer_params(preset, MEMORY_VOCAB), world)
    return {"ranks": world, "counts": counts,
            "planner_num_params": preset.num_params(MEMORY_VOCAB),
            "measured": [r["memory"] for r in ranks],
            "vm_rss": [r["vm_rss"] for r in ranks], "vm_hwm": [r["vm_hwm"] for r in ranks],
            "step_s": [statistics.median(s["step_s"] for s in r["steps"]) for r in ranks],
            "loss": [r["steps"][-1]["loss"] for r in ranks],
            "deepspeed_estimate": {"model_states_per_gpu": ds_gpu, "gathered_largest_layer": ds_largest,
                                   "partitions": ds_gpu - ds_largest},
            "planner": {"params": planner[0], "grads": planner[1], "optimizer": planner[2],
                        "gathered_largest_layer": planner[3], "partitions": sum(planner[:3]),
                        "model_states": sum(planner)}}


def time_run(preset: str, world: int, a) -> dict:
    ranks = launch(preset, TIME_VOCAB, world, str(ROOT / "ds_configs/cpu_zero3.json"), {}, micro=a.micro,
                   seq=a.seq, steps=a.time_steps, timeout=a.timeout)
    # a step lasts as long as its slowest rank; communication share from the same rank's view
    per_rank = []
    for r in ranks:
        timed = r["steps"][1:]  # the first step warms up (allocations, optimizer state)
        per_rank.append({"step_s": statistics.median(s["step_s"] for s in timed),
                         "comm_s": statistics.median(s["comm_s"] for s in timed),
                         "comm_by_op": timed[-1]["comm_by_op"]})
    step = max(x["step_s"] for x in per_rank)
    comm = statistics.mean(x["comm_s"] for x in per_rank)
    tokens = a.micro * a.seq * world
    return {"preset": preset, "ranks": world, "threads_per_rank": ranks[0]["threads"],
            "params": ranks[0]["counts"]["total_params"], "step_s": step, "comm_s": comm,
            "compute_s": step - comm, "comm_share": comm / step, "tokens_per_step": tokens,
            "tokens_per_s": tokens / step, "per_rank": per_rank}


def plot(record: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    mem = record.get("memory", [])
    if mem:
        n = [m["ranks"] for m in mem]
        mib = 1024**2
        meas = [m["measured"][0]["model_states"] / mib for m in mem]
        ax1.plot(n, meas, "o-", label="measured partitions (rank 0)")
        ax1.plot(n, [m["planner"]["partitions"] / mib for m in mem], "s--", label="planner partitions")
        ax1.plot(n, [m["deepspeed_estimate"]["model_states_per_gpu"] / mib for m in mem], "^:",
                 label="DeepSpeed estimate (incl. gathered layer)")
        ax1.plot(n, [m["vm_hwm"][0] / mib for m in mem], "x-.", label="process peak RSS (rank 0)")
        ax1.set(xlabel="ranks", ylabel="MiB per rank", title="150m ZeRO-3 model states per rank", xticks=n)
        ax1.legend(fontsize=7)
    times = record.get("time", [])
    width, x = 0.35, 0
    labels = []
    for preset in TIME_PRESETS:
        for t in [t for t in times if t["preset"] == preset]:
            ax2.bar(x, t["compute_s"], width * 2, color="tab:blue", label="compute" if x == 0 else None)
            ax2.bar(x, t["comm_s"], width * 2, bottom=t["compute_s"], color="tab:orange",
                    label="communication" if x == 0 else None)
            labels.append(f"{preset}\n{t['ranks']} r")
            x += 1
    ax2.set_xticks(range(len(labels)), labels, fontsize=7)
    ax2.set(ylabel="s per step", title="step time split (median)")
    ax2.legend(fontsize=7)
    fig.suptitle(f"ZeRO-3 on CPU ranks (gloo), {record['machine']['cpus']} cores, {record['date']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(PLOT, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=("memory", "time"))
    ap.add_argument("--ranks", default="1,2,4")
    ap.add_argument("--memory-steps", type=int, default=2)
    ap.add_argument("--time-steps", type=int, default=4)
    ap.add_argument("--micro", type=int, default=2)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--plot-only", action="store_true", help="redraw the PNG from the committed JSON")
    # worker arguments (internal)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for name, kind in (("rank", int), ("world", int), ("preset", str), ("vocab", int), ("ds-config", str),
                       ("zero-overrides", str), ("steps", int), ("out", str)):
        ap.add_argument(f"--{name}", type=kind, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        worker(a)
        return
    if a.plot_only:
        plot(json.loads(RESULT.read_text()))
        return
    record = json.loads(RESULT.read_text()) if RESULT.is_file() else {}
    cpu = next((x.split(":", 1)[1].strip() for x in Path("/proc/cpuinfo").read_text().splitlines()
                if x.startswith("model name")), platform.processor())
    import torch

    record.update(date=datetime.date.today().isoformat(),
                  machine={"cpus": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
                           "torch": torch.__version__, "deepspeed": __import__("deepspeed").__version__},
                  args={k: v for k, v in vars(a).items() if k in ("ranks", "memory_steps", "time_steps", "micro",
                                                                  "seq")})
    ranks = [int(x) for x in a.ranks.split(",")]
    if a.only in (None, "memory"):
        record["memory"] = []
        for w in ranks:
            try:
                record["memory"].append(memory_run(w, a))
            except RuntimeError as exc:
                record.setdefault("failed", []).append(str(exc)[:2000])
            print(json.dumps(record["memory"][-1:])[:400], flush=True)
            RESULT.write_text(json.dumps(record, indent=1) + "\n")
    if a.only in (None, "time"):
        record["time"] = []
        for preset in TIME_PRESETS:
            for w in ranks:
                try:
                    record["time"].append(time_run(preset, w, a))
                except RuntimeError as exc:
                    record.setdefault("failed", []).append(str(exc)[:2000])
                t = record["time"][-1]
                print(f"{t['preset']} x {t['ranks']}: {t['step_s']:.3f} s/step, comm {t['comm_s']:.3f} s", flush=True)
                RESULT.write_text(json.dumps(record, indent=1) + "\n")
    RESULT.write_text(json.dumps(record, indent=1) + "\n")
    plot(record)


if __name__ == "__main__":
    main()
