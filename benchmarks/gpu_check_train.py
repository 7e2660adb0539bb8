"""The GPU check's sections that train through the real engine (benchmarks/gpu_check.py runs them): one
phase-1 and one phase-2 step of the tiny preset, the throughput of the 150m/400m/1.3b presets, and phase 2 with
document masking off, dense and flex. Each run is `launchers/pretrain.py` in one process on a small
English-Clone data set built with the project's own tools.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run_shape(dry: bool, preset: str) -> tuple[int, int, int]:
    """(seq_len, steps, micro-batch) of a throughput run: seq 2048 on the GPU, toy sizes dry."""
    return (64 if dry else 2048), (3 if dry else 6), {"150m": 8, "400m": 4, "1.3b": 2}.get(preset, 2)


def _build_data(folder: Path, seq_len: int, samples: int) -> dict:
    """A small English-Clone data set with the project's own tools (tokenizer, table, shards)."""
    import gzip

    from prealign_scale.alignment.clone import build_english_clone
    from prealign_scale.data.build_config import BuildConfig
    from prealign_scale.data.build_shards import build_shards
    from prealign_scale.text.tokenizer import train_bpe

    folder.mkdir(parents=True, exist_ok=True)
    n_docs = max(60, samples * seq_len // 200)
    with gzip.open(ROOT / "data/embedded/kjv_train.jsonl.gz", "rt") as f:
        lines = [line for _, line in zip(range(n_docs), f)]
    (folder / "corpus.jsonl").write_text("".join(lines))
    train_bpe((json.loads(x)["text"] for x in lines), folder / "tok", vocab_size=400)
    build_english_clone(folder / "corpus.jsonl", folder / "tok", folder / "clone", clone_fraction=0.2, top_n=150,
                        seed=0)
    cfg = BuildConfig(corpora={"en": [str(folder / "clone/en.jsonl.gz")],
                               "clone": [str(folder / "clone/clone.jsonl.gz")]},
                      tokenizer=str(folder / "tok"), table=str(folder / "clone/table"), clone_langs=["clone"],
                      mixture={"en": 0.8, "clone": 0.2}, p=0.1, seq_len=seq_len, samples_per_shard=samples,
                      shard_multiple=1, docs_per_chunk=16, total_tokens=seq_len * samples)
    build_shards(cfg, folder / "shards", workers=1, progress=False)
    return {"tok": folder / "tok", "table": folder / "clone/table", "shards": folder / "shards"}


def _data(ctx: dict, seq_len: int, samples: int) -> dict:
    key = f"data_{seq_len}"
    if key not in ctx:
        ctx[key] = _build_data(Path(ctx["work"]) / key, seq_len, samples)
    return ctx[key]


def _ds_config(ctx: dict) -> str:
    """The ds config of the engine runs: cpu_zero3 (dry) or gpu_zero3_bf16 with torch's AdamW (DeepSpeed's
    FusedAdam JIT-compiles for minutes on first use, which the 8-minute budget cannot afford)."""
    if ctx["dry"]:
        return str(ROOT / "ds_configs/cpu_zero3.json")
    ds = json.loads((ROOT / "ds_configs/gpu_zero3_bf16.json").read_text())
    ds["optimizer"]["params"]["torch_adam"] = True
    path = Path(ctx["work"]) / "gpu_zero3_bf16_torch_adam.json"
    path.write_text(json.dumps(ds))
    return str(path)


def _train(ctx: dict, name: str, preset: str, seq_len: int, overrides: list[str], timeout: float) -> list[dict]:
    """One run of launchers/pretrain.py (one process); its metrics.jsonl records."""
    data = _data(ctx, seq_len, 64 if not ctx["dry"] else 16)
    out = Path(ctx["work"]) / name
    env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_PORT"):
        env.pop(k, None)  # the child is its own single process
    if ctx["dry"]:
        env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1", GLOO_SOCKET_IFNAME="lo")
    cmd = [sys.executable, str(ROOT / "launchers/pretrain.py"), "--config", str(ROOT / "configs/tiny.yaml"),
           f"model.preset={preset}", f"data.shard_dir={data['shards']}", f"data.table_dir={data['table']}",
           f"data.tokenizer_dir={data['tok']}", f"run.out_dir={out}", f"run.ds_config={_ds_config(ctx)}",
           "run.export_hf=false", "run.progress=false", "run.tensorboard=false", "run.ckpt_every=0",
           "run.log_every=1", "align.grad_accum=1", "lm.grad_accum=1", *overrides]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"pretrain.py exit {proc.returncode}: {(proc.stdout + proc.stderr)[-3000:]}")
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def section_engine_steps(ctx: dict) -> dict:
    seq = 64 if ctx["dry"] else 128
    recs = _train(ctx, "engine_steps", "tiny", seq, ["align.steps=1", "lm.steps=1", "align.entries_per_rank=8",
                                                     "lm.micro_batch_size=2"], ctx["budget"])
    by_phase = {r["phase"]: r for r in recs}
    out = {p: {"loss": by_phase[p].get("loss"), "step": by_phase[p].get("step")} for p in by_phase}
    out["ok"] = set(by_phase) == {"align", "lm"} and all(
        isinstance(r.get("loss"), float) and math.isfinite(r["loss"]) for r in by_phase.values())
    return out


def section_train(ctx: dict, preset: str) -> dict:
    """Throughput of one preset: phase 1 (entries/s) then phase 2 (tokens/s, MFU), ZeRO-3, one process."""
    dry = ctx["dry"]
    seq, steps, micro = _run_shape(dry, preset)
    entries = 8 if dry else 64  # the large configs' entries_per_rank; the check's table has 150 entries
    overrides = [f"align.steps={steps}", f"lm.steps={steps}", f"align.entries_per_rank={entries}",
                 f"lm.micro_batch_size={micro}", "lm.doc_attention=false"]
    if not dry:
        overrides += ["model.vocab_size=50304", "lm.lm_loss_impl=auto", "align.loss_impl=auto"]
    recs = _train(ctx, f"train_{preset}", preset, seq, overrides, ctx["budget"])
    def after_first(phase):
        return [r for r in recs if r["phase"] == phase and r["step"] > 1] or [r for r in recs if r["phase"] == phase]
    lm, al = after_first("lm"), after_first("align")
    mfu = [r["mfu"] for r in lm if r.get("mfu") is not None]
    return {"preset": preset, "seq_len": seq, "micro_batch": micro, "steps": steps,
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in lm),
            "mfu": statistics.median(mfu) if mfu else None,
            "align_entries_per_s": statistics.median(entries / r["step_time"] for r in al),
            "lm_step_time": statistics.median(r["step_time"] for r in lm), "ok": True}


def section_doc_mask(ctx: dict, preset: str) -> dict:
    """Phase 2 of `preset` at seq 2048 (as section_train) three times: document masking off (plain causal),
    on through the dense boolean mask (sdpa), on through flex's block mask; tokens/s and MFU of each."""
    dry = ctx["dry"]
    seq, steps, micro = _run_shape(dry, preset)
    common = ["align.steps=0", f"lm.steps={steps}", f"lm.micro_batch_size={micro}"]
    if not dry:
        common += ["model.vocab_size=50304", "lm.lm_loss_impl=auto"]
    variants = {"causal": ["lm.doc_attention=false", "model.attention=auto"],
                "dense_mask": ["lm.doc_attention=true", "model.attention=auto"],
                "flex": ["lm.doc_attention=true", "model.attention=flex"]}
    out: dict = {"preset": preset, "seq_len": seq, "micro_batch": micro, "steps": steps}
    t0 = time.monotonic()
    for name, extra in variants.items():
        left = ctx["budget"] - (time.monotonic() - t0)
        if left < 10:
            out[name] = {"skipped": f"section budget: {left:.0f} s left"}
            continue
        recs = [r for r in _train(ctx, f"doc_mask_{preset}_{name}", preset, seq, common + extra, left)
                if r["phase"] == "lm"]
        recs = [r for r in recs if r["step"] > 1] or recs
        mfu = [r["mfu"] for r in recs if r.get("mfu") is not None]
        out[name] = {"tokens_per_s": statistics.median(r["tokens_per_s"] for r in recs),
                     "mfu": statistics.median(mfu) if mfu else None,
                     "step_time": statistics.median(r["step_time"] for r in recs),
                     "loss": recs[-1]["loss"]}
    # the two masked runs see the same data and weights: their losses agree (bf16 on the GPU)
    masked = [out[k]["loss"] for k in ("dense_mask", "flex") if "loss" in out[k]]
    out["ok"] = len(masked) < 2 or abs(masked[0] - masked[1]) <= (1e-4 if dry else 2e-2) * abs(masked[0])
    return out
