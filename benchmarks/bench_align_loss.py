"""Benchmark: the contrastive alignment loss, naive vs chunked (CPU) or vs Triton (GPU), forward + backward.

Each (implementation, size) runs in a fresh subprocess so that peak memory is its own:

- CPU: peak resident memory above the baseline (the Linux high-water mark VmHWM, reset through
  /proc/self/clear_refs after the inputs exist; tracemalloc does not see torch's allocations).
- CUDA: ``torch.cuda.max_memory_allocated`` above the inputs.

Time is the best of ``--repeats`` forward+backward passes after one warm-up. On CUDA the script also
reports the achieved matmul throughput of the blockwise paths: forward 1 and backward 3 (chunked: S, G·K,
Gᵀ·Q) or 4 (Triton: S recomputed in both backward kernels) similarity-sized matmuls of 2·L·N²·H flops each;
compare with the card's dense bf16 peak.

    python benchmarks/bench_align_loss.py                         # CPU: N=4096, L=10, H=256, fp32
    python benchmarks/bench_align_loss.py --device cuda --n 16384 --layers 26 --hidden 2048 \
        --dtype bfloat16 --impls chunked,triton                   # GPU (issue 4 targets)

Prints a table and writes JSON to benchmarks/results/align_loss_<device>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from memtime import measure, run_worker


def worker(args: argparse.Namespace) -> dict:
    import torch

    from prealign_scale.alignment.loss import alignment_loss
    from prealign_scale.config import AlignConfig

    torch.manual_seed(0)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    L, N, H = args.layers, args.n, args.hidden
    block = args.block or None

    def step(vectors, ids) -> float:
        v = vectors.detach().requires_grad_()
        loss, _ = alignment_loss(v, ids, tau=AlignConfig().tau, impl=args.impl, block_size=block)
        loss.backward()
        return float(loss)

    # A tiny warm-up first: loads kernels and thread pools (and compiles Triton) outside the measurement.
    step(torch.randn(L, 64, H, device=device, dtype=dtype), torch.arange(64, device=device) // 2)
    vectors = torch.randn(L, N, H, device=device, dtype=dtype)
    ids = torch.arange(N, device=device) // 2  # translation pairs

    best, peak, loss = measure(lambda: step(vectors, ids), args.repeats, device)
    out = {"impl": args.impl, "L": L, "N": N, "H": H, "dtype": args.dtype, "device": args.device, "block": block,
               "loss": loss, "seconds": best, "peak_bytes": peak}
    if args.impl in ("chunked", "triton"):  # chunked: 1 + 3 matmuls; Triton: 1 + 4 (S recomputed twice)
        out["matmul_tflops"] = (4 if args.impl == "chunked" else 5) * 2 * L * N * N * H / best / 1e12
        # the measure: the fraction of the card's dense bf16 peak the similarity matmuls reach
        from prealign_scale.engine.callbacks import peak_flops

        peak_card = peak_flops() if device.type == "cuda" else None
        if peak_card:
            out["peak_bf16_tflops"] = peak_card / 1e12
            out["fraction_of_bf16_peak"] = out["matmul_tflops"] * 1e12 / peak_card
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--impls", default="naive,chunked")
    p.add_argument("--n", type=int, default=4096)
    p.add_argument("--layers", type=int, default=10)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--block", type=int, default=0, help="block size (0: the implementation's default)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (OMP_NUM_THREADS)")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/align_loss_<device>.json)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.worker:
        args.impl = args.worker
        print("RESULT " + json.dumps(worker(args)))
        return

    flags = {"device": args.device, "n": args.n, "layers": args.layers, "hidden": args.hidden,
             "dtype": args.dtype, "block": args.block, "repeats": args.repeats}
    rows = [run_worker(__file__, impl, flags, args.threads) for impl in args.impls.split(",")]

    import torch

    print(f"alignment loss fwd+bwd, L={args.layers} N={args.n} H={args.hidden} {args.dtype} on {args.device}")
    print(f"{'impl':<8} {'time s':>8} {'peak MiB':>10} {'loss':>10} {'TFLOP/s':>8} {'of peak':>8}")
    for r in rows:
        if "error" in r:
            print(f"{r['impl']:<8} failed: {r['error']}")
            continue
        tf = f"{r['matmul_tflops']:.3f}" if "matmul_tflops" in r else "-"
        frac = f"{r['fraction_of_bf16_peak']:.1%}" if "fraction_of_bf16_peak" in r else "-"
        print(f"{r['impl']:<8} {r['seconds']:>8.2f} {r['peak_bytes'] / 2**20:>10.1f} {r['loss']:>10.5f} {tf:>8} "
              f"{frac:>8}")
    ok = [r for r in rows if "error" not in r]
    by = {r["impl"]: r for r in ok}
    summary = {}
    if "naive" in by and "chunked" in by:
        summary = {"memory_ratio_naive_over_chunked": by["naive"]["peak_bytes"] / max(1, by["chunked"]["peak_bytes"]),
                       "time_ratio_chunked_over_naive": by["chunked"]["seconds"] / by["naive"]["seconds"]}
        print(f"naive/chunked peak memory: {summary['memory_ratio_naive_over_chunked']:.1f}x; "
              f"chunked/naive time: {summary['time_ratio_chunked_over_naive']:.2f}x")
    env_info = {"torch": torch.__version__, "python": platform.python_version(), "cpu_count": os.cpu_count(),
                    "threads": args.threads, "machine": platform.machine(),
                    "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None,
                    "command": " ".join([Path(sys.executable).name] + sys.argv)}
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"align_loss_{args.device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "summary": summary, "env": env_info}, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")


if __name__ == "__main__":
    main()
