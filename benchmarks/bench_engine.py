"""Engine overhead on CPU (issue 3 §8): the 2-rank DeepSpeed ZeRO-3 engine vs a plain single-process loop.

Both train the same megatron-core model (preset `--preset`) on the same shards with the same global batch
(`--global-batch` sequences of the shards' seq_len per step, document-restricted attention, AdamW):

  engine  `deepspeed --num_gpus 2 launchers/pretrain.py --phase lm` (ZeRO-3, gloo, 2 CPU ranks, 1 thread each);
          step time and data-wait share read from its metrics.jsonl
  plain   one process, 2 torch threads, the same GPTModel without DeepSpeed, torch.optim.AdamW, batches from
          the same ShardLoader; the same loss (sum of token losses / loss tokens)

Reported: median step time of each (steps after `--warmup`), their ratio, and the engine's data-wait share.
Usage: python benchmarks/bench_engine.py [--shards runs/demo/shards] [--steps 30]   (make demo builds the data)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run_engine(a, out: Path) -> dict:
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1",
               GLOO_SOCKET_IFNAME="lo", PATH=f"{ROOT / '.venv/bin'}:{os.environ['PATH']}")
    mb = a.global_batch // 2
    cmd = [str(ROOT / ".venv/bin/deepspeed"), "--num_gpus", "2", "--master_port", "29571", "launchers/pretrain.py",
           "--config", "configs/demo_english_clone.yaml", "--phase", "lm", f"model.preset={a.preset}",
           f"data.shard_dir={a.shards}", f"data.table_dir={a.table}", f"data.tokenizer_dir={a.tok}",
           f"lm.steps={a.steps}", f"lm.micro_batch_size={mb}", "lm.grad_accum=1", f"run.out_dir={out}",
           "run.export_hf=false", "run.progress=false", "run.tensorboard=false", "run.ckpt_every=0"]
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    recs = [r for r in recs if r.get("phase") == "lm" and "step_time" in r][a.warmup:-1]  # last step saves
    return {"step_time": statistics.median(r["step_time"] for r in recs),
            "data_wait_share": statistics.mean(r["data_wait"] for r in recs),
            "loss_last": recs[-1]["loss"]}


def run_plain(a) -> dict:
    """The same model and batches in a plain PyTorch loop (world size 1, no DeepSpeed)."""
    import torch
    import torch.distributed as dist

    from prealign_scale.data.packed_masks import attention_mask_from_segments
    from prealign_scale.data.shard_format import IGNORE_INDEX, Manifest
    from prealign_scale.data.shard_reader import ShardLoader
    from prealign_scale.model.builder import build_gpt_model
    from prealign_scale.model.parallel import init_model_parallel
    from prealign_scale.model.presets import get_preset

    torch.set_num_threads(2)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29572")
    dist.init_process_group("gloo", rank=0, world_size=1)
    init_model_parallel(1, seed=1234)
    manifest = Manifest.read(a.shards)
    model = build_gpt_model(get_preset(a.preset), manifest.vocab_size, manifest.seq_len)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    loader = iter(ShardLoader(a.shards, a.global_batch, dp_rank=0, dp_world_size=1, seed=1234, num_workers=0))
    times = []
    for _ in range(a.steps):
        t0 = time.perf_counter()
        b = next(loader)
        mask = attention_mask_from_segments(b["segments"])
        targets = b["targets"]
        per_token = model(b["input_ids"], b["position_ids"], mask, labels=targets.clamp(min=0)).float()
        keep = targets != IGNORE_INDEX
        loss = (per_token * keep).sum() / keep.sum().clamp_min(1)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    dist.destroy_process_group()
    return {"step_time": statistics.median(times[a.warmup:]), "loss_last": float(loss)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", default="runs/demo/shards")
    ap.add_argument("--table", default="runs/demo/clone/table")
    ap.add_argument("--tok", default="runs/demo/tok")
    ap.add_argument("--preset", default="synth-3m")
    ap.add_argument("--global-batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    a = ap.parse_args()
    if not (ROOT / a.shards / "manifest.json").is_file():
        sys.exit(f"{a.shards}: no shards; run `make demo` first (or pass --shards/--table/--tok)")
    out = Path(tempfile.mkdtemp(prefix="bench_engine_"))
    try:
        engine = run_engine(a, out / "run")
    finally:
        shutil.rmtree(out, ignore_errors=True)
    plain = run_plain(a)
    ratio = engine["step_time"] / plain["step_time"]
    print(f"engine (2 ranks, ZeRO-3): {engine['step_time']:.3f} s/step, data wait {100 * engine['data_wait_share']:.2f}%")
    print(f"plain  (1 process)      : {plain['step_time']:.3f} s/step")
    print(f"ratio engine / plain    : {ratio:.2f}")
    record = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()}, "args": vars(a),
              "engine": engine, "plain": plain, "ratio_engine_over_plain": round(ratio, 3)}
    (ROOT / "benchmarks/results").mkdir(parents=True, exist_ok=True)
    (ROOT / "benchmarks/results/engine_cpu.json").write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
