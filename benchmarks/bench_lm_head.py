"""Benchmark: the LM-head loss, full logits + F.cross_entropy ("naive") vs the fused chunked path.

Each (implementation, vocabulary) runs in a fresh subprocess; peak memory is measured as in
bench_align_loss.py (CPU: VmHWM above the baseline after a reset; CUDA: max_memory_allocated). Time is the
best of ``--repeats`` forward+backward passes (loss with reduction="sum", gradients for hidden and weight).
About 10 % of the targets are -100 (ignored), as after input-only code-switching and packing.

    python benchmarks/bench_lm_head.py                                   # CPU: T=4096, H=256, V=16384,65536
    python benchmarks/bench_lm_head.py --device cuda --dtype bfloat16 --tokens 16384 --hidden 2048 \
        --vocabs 65536,262144 --impls naive,chunked,liger                # GPU (liger-kernel if installed)

Prints a table and writes JSON to benchmarks/results/lm_head_<device>.json.
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

    from prealign_scale.kernels.lm_head_loss import IGNORE_INDEX, fused_linear_cross_entropy

    torch.manual_seed(0)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    T, H, V = args.tokens, args.hidden, args.vocab
    chunk = args.chunk or None

    def step(hidden, weight, targets) -> float:
        h, w = hidden.detach().requires_grad_(), weight.detach().requires_grad_()
        loss = fused_linear_cross_entropy(h, w, targets, reduction="sum", chunk_size=chunk, impl=args.impl)
        loss.backward()
        return float(loss)

    small = torch.randint(0, V, (64,), device=device)
    step(torch.randn(64, H, device=device, dtype=dtype), torch.randn(V, H, device=device, dtype=dtype) * 0.02,
         small)  # warm-up outside the measurement
    hidden = torch.randn(T, H, device=device, dtype=dtype)
    weight = torch.randn(V, H, device=device, dtype=dtype) * 0.02
    targets = torch.randint(0, V, (T,), device=device)
    targets[torch.rand(T, device=device) < 0.1] = IGNORE_INDEX

    best, peak, loss = measure(lambda: step(hidden, weight, targets), args.repeats, device)
    return {"impl": args.impl, "T": T, "H": H, "V": V, "dtype": args.dtype, "device": args.device, "chunk": chunk, "loss": loss,
                "seconds": best, "peak_bytes": peak}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--impls", default="naive,chunked")
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--vocabs", default="16384,65536", help="comma-separated vocabulary sizes (2×8k, 64k)")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--chunk", type=int, default=0, help="tokens per chunk (0: the default heuristic)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/lm_head_<device>.json)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--vocab", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.worker:
        args.impl = args.worker
        print("RESULT " + json.dumps(worker(args)))
        return

    flags = {"device": args.device, "tokens": args.tokens, "hidden": args.hidden, "dtype": args.dtype,
             "chunk": args.chunk, "repeats": args.repeats}
    rows = []
    for vocab in (int(v) for v in args.vocabs.split(",")):
        for impl in args.impls.split(","):
            row = run_worker(__file__, impl, {**flags, "vocab": vocab}, args.threads)
            rows.append({"V": vocab, **row} if "error" in row else row)

    import torch

    print(f"LM-head loss fwd+bwd, T={args.tokens} H={args.hidden} {args.dtype} on {args.device}")
    print(f"{'V':>7} {'impl':<8} {'time s':>8} {'peak MiB':>10} {'loss':>14}")
    for r in rows:
        if "error" in r:
            print(f"{r['V']:>7} {r['impl']:<8} failed: {r['error']}")
            continue
        print(f"{r['V']:>7} {r['impl']:<8} {r['seconds']:>8.2f} {r['peak_bytes'] / 2**20:>10.1f} {r['loss']:>14.3f}")
    summary = {}
    for vocab in {r["V"] for r in rows}:
        by = {r["impl"]: r for r in rows if r["V"] == vocab and "error" not in r}
        if "naive" in by and "chunked" in by:
            summary[str(vocab)] = {
                "memory_ratio_naive_over_chunked": by["naive"]["peak_bytes"] / max(1, by["chunked"]["peak_bytes"]),
                "time_ratio_chunked_over_naive": by["chunked"]["seconds"] / by["naive"]["seconds"]}
            s = summary[str(vocab)]
            print(f"V={vocab}: naive/chunked peak memory {s['memory_ratio_naive_over_chunked']:.1f}x, "
                  f"chunked/naive time {s['time_ratio_chunked_over_naive']:.2f}x")
    env_info = {"torch": torch.__version__, "python": platform.python_version(), "cpu_count": os.cpu_count(),
                    "threads": args.threads, "machine": platform.machine(),
                    "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None,
                    "command": " ".join([Path(sys.executable).name] + sys.argv)}
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"lm_head_{args.device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "summary": summary, "env": env_info}, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")


if __name__ == "__main__":
    main()
