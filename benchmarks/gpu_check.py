"""The one-command GPU check (issue 12 §1): correctness and performance of every GPU path, unattended.

    python benchmarks/gpu_check.py --out $OUT/gpu_check                 # on one H100/H200, <= 8 minutes
    python benchmarks/gpu_check.py --dry                                  # on CPU: every section at toy size

Writes ``<out>.json`` (every figure) and ``<out>.md`` (a table: card, driver and versions first, then one
row per check). Sections, each with its own time budget and try/except (a failure is recorded with the last
lines of its traceback and the rest still runs; a section whose budget no longer fits the global deadline is
skipped, saying so):

correctness
  align_loss     Triton alignment loss vs the chunked reference, fp32 and bf16, N=16k L=26 H=2048: loss and
                 gradient (relative norm of the difference) within tolerance
  lm_head        liger's fused linear cross-entropy vs the chunked one (bf16, T=16k H=2048 V=64k)
  te_layer       the Transformer Engine layer spec vs the local spec, same weights, fp32 forward (skipped
                 with the reason when TE does not import)
  flex_attention the flex core attention (model.attention=flex, document block mask from segment ids) vs
                 SDPA with the dense document mask, fp32 and bf16, b=4 s=2048 16 heads (8 groups) x 128:
                 output (with and without autograd) and q/k/v gradients (relative norm of the difference);
                 dry: toy size; on CPU only the no-autograd output runs the flex kernel (eager), the
                 gradients come from the module's dense CPU path (torch has no flex backward on CPU)
  zero_init      bf16 `deepspeed.zero.Init` construction (150m): the std of each kind of weight vs megatron's
                 init (0.02; output projections 0.02/sqrt(2 layers); norms 1)
  engine_steps   one phase-1 and one phase-2 step of the tiny preset through the real engine
                 (launchers/pretrain.py, one process)
performance
  kernels        time of the Triton alignment loss and the LM-head loss (fwd + bwd, bf16) and their share of
                 the card's dense bf16 peak
  train_<preset> 150m, 400m, 1.3b: ZeRO-3 bf16, seq 2048, one GPU, fused LM head: tokens/s and MFU of
                 phase 2, entries/s of phase 1 (median over the steps after the first)
  doc_mask_150m  phase 2 of 150m at seq 2048 (as train_150m): tokens/s and MFU with document masking off
                 (plain causal, SDPA flash), on through the dense mask (sdpa) and on through flex

``--dry`` (CPU): the same code at toy sizes, Triton under ``TRITON_INTERPRET=1``, the engine on gloo with one
rank and ds_configs/cpu_zero3.json, performance sections with measured CPU numbers and MFU null; that mode is
tests/test_gpu_check.py. Results on a lent GPU: benchmarks/README.md ("GPU check").
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # its sibling module, also when loaded by file path

from gpu_check_train import section_doc_mask, section_engine_steps, section_train

# Sizes: (GPU, dry). The dry sizes keep the Triton interpreter to a few programs (STACK.md: ~10 ms each).
SIZES = {
    "align": ({"L": 26, "N": 16384, "H": 2048}, {"L": 2, "N": 64, "H": 32}),
    "lm_head": ({"T": 16384, "H": 2048, "V": 65536}, {"T": 64, "H": 32, "V": 256}),
    "zero_init_preset": ("150m", "tiny"),
    "train_presets": (("150m", "400m", "1.3b"), ("tiny",)),
    "doc_mask_preset": ("150m", "tiny"),
}
# flex_attention section: (b, s, heads, query groups, head dim) on the GPU and dry
FLEX_SIZE = ((4, 2048, 16, 8, 128), (2, 96, 4, 2, 16))
# Tolerances: the loss's relative error and the gradient's relative error norm ||g_a - g_b|| / ||g_b||.
TOL = {"float32": {"loss": 1e-4, "grad": 1e-3}, "bfloat16": {"loss": 2e-2, "grad": 5e-2}}
TAU = 0.1  # AlignConfig's default; the check only needs a fixed temperature


class Skip(Exception):
    """A section that cannot run here (a missing package); the message says why."""


# ------------------------------------------------------------------------------------------- helpers
def _size(key: str, dry: bool):
    return SIZES[key][1 if dry else 0]


def _device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(fn, repeats: int) -> tuple[float, object]:
    """Best wall time of `repeats` calls after one warm-up call, and the last result."""
    out = fn()
    _sync()
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        _sync()
        best = min(best, time.perf_counter() - t0)
    return best, out


def _rel(a, b) -> float:
    """||a - b|| / ||b|| in fp64."""
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def peak_flops() -> float | None:
    """The card's dense bf16 peak (the engine's table), None on CPU."""
    from prealign_scale.engine.callbacks import peak_flops as engine_peak

    return engine_peak()


def _version(module: str) -> str | None:
    import importlib.metadata as md

    for name in (module, module.replace("_", "-")):
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            continue
    return None


# ------------------------------------------------------------------------------------------- sections
def section_env(ctx: dict) -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cpu_count": os.cpu_count()}
    for pkg in ("triton", "deepspeed", "megatron_core", "transformer_engine", "liger_kernel", "transformers"):
        info[pkg] = _version(pkg)
    if torch.cuda.is_available():
        info["card"] = torch.cuda.get_device_name()
        info["memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20, check=False)
            info["driver"] = smi.stdout.strip() or None
        except OSError:
            info["driver"] = None
    else:
        info["card"], info["driver"] = f"CPU ({platform.machine()})", None
    info["peak_bf16_flops"] = peak_flops()
    return info


def _align_inputs(dtype_name: str, sz: dict):
    import torch

    g = torch.Generator(device="cpu").manual_seed(0)
    v = torch.randn(sz["L"], sz["N"], sz["H"], generator=g).to(_device(), getattr(torch, dtype_name))
    ids = (torch.arange(sz["N"]) // 2).to(_device())  # translation pairs: every word has one positive
    return v, ids


def _align_fwd_bwd(vectors, ids, impl: str):
    from prealign_scale.alignment.loss import alignment_loss

    v = vectors.detach().requires_grad_()
    loss, _ = alignment_loss(v, ids, tau=TAU, impl=impl)
    loss.backward()
    return loss.detach(), v.grad


def section_align_loss(ctx: dict) -> dict:
    sz = _size("align", ctx["dry"])
    out = {"size": sz}
    for dtype_name in ("float32", "bfloat16"):
        v, ids = _align_inputs(dtype_name, sz)
        lt, gt = _align_fwd_bwd(v, ids, "triton")
        lc, gc = _align_fwd_bwd(v, ids, "chunked")
        r = {"loss_triton": float(lt), "loss_chunked": float(lc),
             "loss_rel_err": abs(float(lt) - float(lc)) / abs(float(lc)), "grad_rel_err": _rel(gt, gc)}
        r["ok"] = r["loss_rel_err"] <= TOL[dtype_name]["loss"] and r["grad_rel_err"] <= TOL[dtype_name]["grad"]
        r["tolerance"] = TOL[dtype_name]
        out[dtype_name] = r
        del v, gt, gc
    out["ok"] = out["float32"]["ok"] and out["bfloat16"]["ok"]
    return out


def _lm_inputs(sz: dict, dtype_name: str):
    import torch

    g = torch.Generator(device="cpu").manual_seed(0)
    dev, dt = _device(), getattr(torch, dtype_name)
    hidden = (torch.randn(sz["T"], sz["H"], generator=g)).to(dev, dt)
    weight = (torch.randn(sz["V"], sz["H"], generator=g) * 0.02).to(dev, dt)
    targets = torch.randint(0, sz["V"], (sz["T"],), generator=g)
    targets[::10] = -100  # 10 % ignored positions
    return hidden, weight, targets.to(dev)


def _lm_fwd_bwd(hidden, weight, targets, impl: str):
    from prealign_scale.kernels.lm_head_loss import fused_linear_cross_entropy

    h, w = hidden.detach().requires_grad_(), weight.detach().requires_grad_()
    loss = fused_linear_cross_entropy(h, w, targets, reduction="sum", impl=impl)
    loss.backward()
    return loss.detach(), h.grad, w.grad


def section_lm_head(ctx: dict) -> dict:
    from prealign_scale.kernels.lm_head_loss import liger_available

    if not liger_available():
        raise Skip("liger-kernel does not import (pip install --no-deps liger-kernel==0.8.5)")
    sz = _size("lm_head", ctx["dry"])
    dtype_name = "float32" if ctx["dry"] else "bfloat16"  # the interpreter runs fp32 only
    hidden, weight, targets = _lm_inputs(sz, dtype_name)
    ll, lh, lw = _lm_fwd_bwd(hidden, weight, targets, "liger")
    cl, ch, cw = _lm_fwd_bwd(hidden, weight, targets, "chunked")
    tol = TOL[dtype_name]
    out = {"size": sz, "dtype": dtype_name, "loss_liger": float(ll), "loss_chunked": float(cl),
           "loss_rel_err": abs(float(ll) - float(cl)) / abs(float(cl)),
           "grad_hidden_rel_err": _rel(lh, ch), "grad_weight_rel_err": _rel(lw, cw), "tolerance": tol}
    out["ok"] = (out["loss_rel_err"] <= tol["loss"] and out["grad_hidden_rel_err"] <= tol["grad"]
                 and out["grad_weight_rel_err"] <= tol["grad"])
    return out


def _start_single_process_group() -> None:
    """One rank: a process group (nccl on GPU, gloo on CPU) and megatron's groups, once per process."""
    import torch
    import torch.distributed as dist

    from prealign_scale.dist import free_port
    from prealign_scale.model.parallel import init_model_parallel, model_parallel_is_initialized

    if not dist.is_initialized():
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1",
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("MASTER_PORT") or str(free_port()))
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(0)
        dist.init_process_group(backend, rank=0, world_size=1)
    if not model_parallel_is_initialized():
        init_model_parallel(1, seed=1234)


# TE spec names that hold the local spec's separate norm weights (TE fuses the norm into the next linear).
TE_KEY_MAP = {"input_layernorm.weight": "self_attention.linear_qkv.layer_norm_weight",
              "pre_mlp_layernorm.weight": "mlp.linear_fc1.layer_norm_weight"}


def section_te_layer(ctx: dict) -> dict:
    import torch

    from prealign_scale.model.builder import build_gpt_model, transformer_engine_available
    from prealign_scale.model.presets import get_preset

    if not transformer_engine_available():
        raise Skip("Transformer Engine does not import (transformer_engine.pytorch); the local spec is used")
    _start_single_process_group()
    preset, vocab, seq = get_preset("tiny"), 1024, 128
    torch.manual_seed(0)
    local = build_gpt_model(preset, vocab, seq, attention="sdpa").to(_device()).eval()
    te = build_gpt_model(preset, vocab, seq, attention="te").to(_device()).eval()
    state = {}
    for k, v in local.state_dict().items():
        for old, new in TE_KEY_MAP.items():
            k = k.replace(old, new)
        state[k] = v
    missing, unexpected = te.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("_extra_state")]
    if missing or unexpected:
        raise RuntimeError(f"weights do not map: missing {missing[:5]}, unexpected {unexpected[:5]}")
    ids = torch.randint(0, vocab, (2, seq), device=_device())
    pos = torch.arange(seq, device=_device()).expand(2, -1)
    with torch.no_grad():
        a = local(ids, pos, None).float()
        b = te(ids, pos, None).float()
    err = _rel(b, a)
    return {"preset": "tiny", "logits_rel_err": err, "tolerance": 1e-4, "ok": err <= 1e-4}


def _packed_segments(b: int, s: int, docs: int, gen):
    """[b, s] segment ids: `docs` documents of random lengths per row (ids rising along the row)."""
    import torch

    rows = []
    for _ in range(b):
        row = torch.zeros(s, dtype=torch.long)
        row[torch.randperm(s - 1, generator=gen)[:docs - 1] + 1] = 1
        rows.append(row.cumsum(0))
    return torch.stack(rows)


def section_flex_attention(ctx: dict) -> dict:
    """FlexAttention (block mask from segment ids) vs SDPAttention (dense document mask): output and grads."""
    import torch
    from megatron.core.transformer.enums import AttnMaskType

    from prealign_scale.data.packed_masks import attention_mask_from_segments
    from prealign_scale.model.builder import make_transformer_config
    from prealign_scale.model.flex_attention import FlexAttention
    from prealign_scale.model.presets import get_preset
    from prealign_scale.model.sdpa_attention import SDPAttention

    _start_single_process_group()
    b, s, heads, groups, hd = FLEX_SIZE[1 if ctx["dry"] else 0]
    preset = dataclasses.replace(get_preset("tiny"), num_attention_heads=heads, num_query_groups=groups,
                                 hidden_size=heads * hd)
    config = make_transformer_config(preset)
    kw = {"config": config, "layer_number": 1, "attn_mask_type": AttnMaskType.causal, "attention_type": "self"}
    sdpa, flex = SDPAttention(**kw), FlexAttention(**kw)
    gen = torch.Generator().manual_seed(0)
    segments = _packed_segments(b, s, 8, gen).to(_device())
    dense = attention_mask_from_segments(segments)
    out: dict = {"size": {"b": b, "s": s, "heads": heads, "groups": groups, "head_dim": hd}}
    ok = True
    for dtype_name in ("float32", "bfloat16"):
        dtype = getattr(torch, dtype_name)
        base = [torch.randn(s, b, n, hd, generator=gen) for n in (heads, groups, groups)]
        weight = torch.randn(s, b, heads * hd, generator=gen).to(_device(), dtype)
        res = []
        for module, mask in ((sdpa, dense), (flex, segments)):
            q, k, v = (t.to(_device(), dtype).requires_grad_() for t in base)
            o = module(q, k, v, mask)
            (o.float() * weight.float()).sum().backward()
            res.append([o.detach(), q.grad, k.grad, v.grad])
        errs = {name: _rel(got, want) for name, got, want in zip(("out", "dq", "dk", "dv"), res[1], res[0])}
        with torch.no_grad():  # the flex kernel's forward without autograd: the real kernel on CPU too
            errs["out_no_grad"] = _rel(flex(*(t.to(_device(), dtype) for t in base), segments), res[0][0])
        tol = 1e-4 if dtype_name == "float32" else 2e-2
        out[dtype_name] = {**errs, "tolerance": tol}
        ok = ok and all(e <= tol for e in errs.values())
    out["grad_kernel"] = "flex (compiled)" if torch.cuda.is_available() else "dense CPU path (no flex backward)"
    out["ok"] = ok
    return out


def section_zero_init(ctx: dict) -> dict:
    import deepspeed
    import torch

    from prealign_scale.model.builder import build_gpt_model
    from prealign_scale.model.presets import get_preset

    _start_single_process_group()
    name = _size("zero_init_preset", ctx["dry"])
    preset = get_preset(name)
    ds = json.loads((ROOT / "ds_configs/gpu_zero3_bf16.json").read_text())
    ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"] = 1, 1
    ds["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    model = build_gpt_model(preset, 1024 if ctx["dry"] else 50304, 2048 if not ctx["dry"] else 128,
                            ds_config=ds, params_dtype=torch.bfloat16)
    expect_out = 0.02 / math.sqrt(2 * preset.num_layers)
    kinds: dict[str, list[float]] = {}
    dtypes = set()
    for pname, p in model.named_parameters():
        with deepspeed.zero.GatheredParameters([p]):
            t = p.detach().float()
            dtypes.add(str(p.dtype))
            if pname.endswith("layer_norm_weight") or "layernorm" in pname:  # local and TE names
                kind, value = "norm (mean, 1)", float(t.mean())
            elif "linear_proj" in pname or "linear_fc2" in pname:
                kind, value = f"output projections (std, {expect_out:.5f})", float(t.std())
            else:
                kind, value = "embedding, qkv, fc1, output layer (std, 0.02)", float(t.std())
        kinds.setdefault(kind, []).append(value)
    stats = {k: {"min": min(v), "max": max(v), "n": len(v)} for k, v in kinds.items()}
    expected = {k: float(k.rsplit(", ", 1)[1].rstrip(")")) for k in kinds}
    ok = all(abs(s["min"] - expected[k]) <= 0.1 * expected[k] and abs(s["max"] - expected[k]) <= 0.1 * expected[k]
             for k, s in stats.items())
    ok = ok and dtypes == {"torch.bfloat16"}
    return {"preset": name, "dtypes": sorted(dtypes), "stats": stats, "ok": ok}


def section_kernels(ctx: dict) -> dict:
    """Fwd + bwd time of the fused kernels in bf16 (fp32 dry) and the share of the card's dense bf16 peak.

    FLOPs: alignment loss 2·L·N²·H per similarity-sized matmul, 1 forward + 4 backward (Triton recomputes S
    in both backward kernels); LM head 2·T·V·H per matmul, 3 (logits, grad hidden, grad weight)."""
    peak = peak_flops()
    dtype_name = "float32" if ctx["dry"] else "bfloat16"
    sz = _size("align", ctx["dry"])
    v, ids = _align_inputs(dtype_name, sz)
    t_align, _ = _timed(lambda: _align_fwd_bwd(v, ids, "triton"), 1 if ctx["dry"] else 3)
    f_align = 5 * 2 * sz["L"] * sz["N"] ** 2 * sz["H"]
    v = None  # free the inputs before the LM head's
    out = {"dtype": dtype_name, "align_loss_triton": {
        "size": sz, "seconds": t_align, "tflops": f_align / t_align / 1e12,
        "share_of_peak": f_align / t_align / peak if peak else None}}
    from prealign_scale.kernels.lm_head_loss import liger_available

    lm_impl = "liger" if liger_available() else "chunked"
    lz = _size("lm_head", ctx["dry"])
    hidden, weight, targets = _lm_inputs(lz, dtype_name)
    t_lm, _ = _timed(lambda: _lm_fwd_bwd(hidden, weight, targets, lm_impl), 1 if ctx["dry"] else 3)
    f_lm = 3 * 2 * lz["T"] * lz["V"] * lz["H"]
    out[f"lm_head_{lm_impl}"] = {"size": lz, "seconds": t_lm, "tflops": f_lm / t_lm / 1e12,
                                 "share_of_peak": f_lm / t_lm / peak if peak else None}
    out["ok"] = True
    return out


# ------------------------------------------------------------------------------------------- the runner
def sections(dry: bool) -> list[tuple[str, float, object]]:
    """(name, budget in seconds on the GPU, function). Dry budgets are the same; the global deadline rules."""
    out = [("env", 30, section_env), ("align_loss", 60, section_align_loss), ("lm_head", 30, section_lm_head),
           ("te_layer", 30, section_te_layer), ("flex_attention", 40, section_flex_attention),
           ("zero_init", 40, section_zero_init),
           ("engine_steps", 90, section_engine_steps), ("kernels", 30, section_kernels)]
    for preset in _size("train_presets", dry):
        out.append((f"train_{preset}", 90 if preset != "1.3b" else 120,
                    lambda ctx, p=preset: section_train(ctx, p)))
        if preset == _size("doc_mask_preset", dry):  # document masking on and off, right after its train row
            out.append((f"doc_mask_{preset}", 150, lambda ctx, p=preset: section_doc_mask(ctx, p)))
    return out


def run_check(dry: bool, deadline_s: float, only: list[str] | None = None) -> dict:
    t_start = time.monotonic()
    results: dict = {"mode": "dry" if dry else "gpu", "deadline_s": deadline_s, "sections": {}}
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as work:
        ctx = {"dry": dry, "work": work}
        for name, budget, fn in sections(dry):
            if only and name not in only and name != "env":
                continue
            left = deadline_s - (time.monotonic() - t_start)
            rec: dict = {"budget_s": budget}
            if left < min(budget, 15):
                rec.update(status="skipped", reason=f"global deadline: {left:.0f} s left, budget {budget} s")
                results["sections"][name] = rec
                continue
            ctx["budget"] = min(budget, left)
            t0 = time.monotonic()
            try:
                value = fn(ctx)
                rec.update(status="ok" if value.get("ok", True) else "FAILED", result=value)
            except Skip as exc:
                rec.update(status="skipped", reason=str(exc))
            # one section's failure is recorded and the rest still runs
            except Exception as exc:  # noqa: BLE001
                rec.update(status="error", error=f"{type(exc).__name__}: {exc}"[-2000:],
                           traceback=traceback.format_exc()[-3000:])
            rec["seconds"] = round(time.monotonic() - t0, 2)
            if rec["seconds"] > budget:
                rec["over_budget"] = True
            results["sections"][name] = rec
            print(f"[gpu_check] {name}: {rec['status']} ({rec['seconds']} s)", file=sys.stderr, flush=True)
    results["seconds"] = round(time.monotonic() - t_start, 1)
    return results


def _fmt(x) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.3g}"
    return str(x)


def markdown(results: dict) -> str:
    env = results["sections"].get("env", {}).get("result", {})
    lines = [f"# GPU check ({results['mode']}, {results['seconds']} s)", "",
             "| item | value |", "|---|---|"]
    for k in ("card", "memory_gib", "driver", "cuda", "torch", "triton", "deepspeed", "megatron_core",
              "transformer_engine", "liger_kernel", "python", "peak_bf16_flops"):
        lines.append(f"| {k} | {_fmt(env.get(k))} |")
    lines += ["", "| section | status | s | figures |", "|---|---|---:|---|"]
    for name, rec in results["sections"].items():
        if name == "env":
            continue
        r = rec.get("result", {})
        if name == "align_loss" and r:
            fig = "; ".join(f"{d}: loss err {_fmt(r[d]['loss_rel_err'])}, grad err {_fmt(r[d]['grad_rel_err'])}"
                            for d in ("float32", "bfloat16"))
        elif name == "lm_head" and r:
            fig = (f"loss err {_fmt(r['loss_rel_err'])}, grad err hidden {_fmt(r['grad_hidden_rel_err'])} "
                   f"weight {_fmt(r['grad_weight_rel_err'])}")
        elif name == "te_layer" and r:
            fig = f"logits err {_fmt(r['logits_rel_err'])}"
        elif name == "flex_attention" and r:
            fig = "; ".join(f"{d}: out err {_fmt(r[d]['out'])} (no grad {_fmt(r[d]['out_no_grad'])}), grad err "
                            f"q/k/v {_fmt(r[d]['dq'])}/"
                            f"{_fmt(r[d]['dk'])}/{_fmt(r[d]['dv'])}" for d in ("float32", "bfloat16"))
        elif name.startswith("doc_mask_") and r:
            fig = "; ".join(f"{k}: {_fmt(r[k].get('tokens_per_s'))} tokens/s, MFU {_fmt(r[k].get('mfu'))}"
                            for k in ("causal", "dense_mask", "flex"))
        elif name == "zero_init" and r:
            fig = "; ".join(f"{k}: {_fmt(s['min'])}..{_fmt(s['max'])}" for k, s in r["stats"].items())
        elif name == "engine_steps" and r:
            fig = ", ".join(f"{p} loss {_fmt(r[p]['loss'])}" for p in ("align", "lm") if p in r)
        elif name == "kernels" and r:
            fig = "; ".join(f"{k}: {_fmt(v['seconds'])} s, {_fmt(v['tflops'])} TFLOP/s, "
                            f"{_fmt(v['share_of_peak'])} of peak" for k, v in r.items() if isinstance(v, dict))
        elif name.startswith("train_") and r:
            fig = (f"{_fmt(r['tokens_per_s'])} tokens/s, MFU {_fmt(r['mfu'])}, "
                   f"phase 1 {_fmt(r['align_entries_per_s'])} entries/s")
        else:
            fig = rec.get("reason") or rec.get("error", "")[:200].replace("|", "/").replace("\n", " ")
        lines.append(f"| {name} | {rec['status']} | {_fmt(rec.get('seconds'))} | {fig} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry", action="store_true", help="CPU: toy sizes, Triton interpreter, gloo")
    ap.add_argument("--out", default=None, help="output path without suffix (default "
                    "benchmarks/results/gpu_check_<gpu|dry>); writes .json and .md")
    ap.add_argument("--deadline", type=float, default=480.0, help="global deadline in seconds (default 480)")
    ap.add_argument("--only", default=None, help="comma-separated section names (env always runs)")
    a = ap.parse_args(argv)
    results = run_check(a.dry, a.deadline, a.only.split(",") if a.only else None)
    out = Path(a.out) if a.out else ROOT / "benchmarks/results" / f"gpu_check_{results['mode']}"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))
    bad = [n for n, r in results["sections"].items() if r["status"] in ("error", "FAILED")]
    return 1 if bad else 0


if __name__ == "__main__":
    if "--dry" in sys.argv[1:]:
        # before anything imports triton or deepspeed: the interpreter for Triton, DeepSpeed's CPU accelerator
        os.environ.setdefault("TRITON_INTERPRET", "1")
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    sys.exit(main())
